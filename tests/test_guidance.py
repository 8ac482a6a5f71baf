"""Score distillation on tiny random priors (CPU, float32 unless said)."""

import os

import pytest
import torch

from splat3d.distill.guidance import REGISTRY, GuidanceConfig, make_guidance
from splat3d.distill.guidance.base import perpendicular, pretrained_eps, target_loss, timestep_bounds
from splat3d.distill.guidance.l2vsd import last_layer
from splat3d.distill.guidance.lora import LORA_ADAPTER
from splat3d.distill.priors import load_prior
from splat3d.distill.prompts import PromptConfig, PromptProcessor, view_names
from splat3d.errors import Splat3dError
from splat3d.render.cameras import orbit_cameras

KINDS = [("pixel", "epsilon"), ("pixel", "v_prediction"), ("latent", "epsilon"), ("latent", "v_prediction")]


def setup(folder, method, dtype=torch.float32, **config):
    prior = load_prior(folder, device="cpu", dtype=dtype)
    prompt = PromptProcessor(prior, PromptConfig("a red cube", negative_prompt="blue"))
    guidance = make_guidance(method, prior, prompt, GuidanceConfig(**config))
    return prior, guidance


def batch(prior, b=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    size = prior.image_size
    images = torch.rand(b, 3, size, size, generator=g, dtype=dtype).requires_grad_(True)
    cams = orbit_cameras(torch.tensor([15.0, 40.0][:b]), torch.tensor([0.0, 150.0][:b]), 3.0, 40.0, size, size)
    return images, cams.to(dtype=dtype)


def frozen_state(prior):
    modules = {"unet": prior.unet, "text": prior.text_encoder}
    if prior.vae is not None:
        modules["vae"] = prior.vae
    return {
        f"{m}.{k}": v.detach().clone()
        for m, mod in modules.items()
        for k, v in mod.state_dict().items()
        if "lora_" not in k
    }


def test_load_prior_kinds(tiny_priors):
    for (kind, pred), folder in tiny_priors.items():
        prior = load_prior(folder, device="cpu")
        assert prior.dtype == torch.float32 and prior.prediction_type == pred
        assert prior.is_latent == (kind == "latent")
        assert prior.image_size == (64 if kind == "latent" else 16)
        assert not any(p.requires_grad for p in prior.unet.parameters())
        z = prior.encode_images(torch.rand(1, 3, 40, 40))
        assert z.shape == ((1, 4, 16, 16) if kind == "latent" else (1, 3, 16, 16))


def test_text_embeddings_are_cached(tiny_priors):
    prior = load_prior(tiny_priors[("pixel", "epsilon")])
    calls = []
    original = prior.text_encoder.forward
    prior.text_encoder.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    a = prior.encode_text(["a red cube", "a red cube, side view"])
    b = prior.encode_text(["a red cube, side view", "a red cube"])
    assert len(calls) == 1 and torch.equal(a[0], b[1])
    assert not torch.equal(a[0], a[1])


def test_missing_models_name_the_three_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for spec in ("someone/not-a-cached-model", "nonsense spec"):
        with pytest.raises(Splat3dError) as err:
            load_prior(spec)
        message = str(err.value)
        assert spec in message and "local diffusers folder" in message and "cache" in message
        assert "built-in prior" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(Splat3dError, match="no unet/"):
        load_prior(tmp_path / "empty")


def test_view_dependent_prompts(tiny_priors):
    cfg = PromptConfig("a corgi")
    names = view_names(torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0]), torch.tensor([10.0, -100.0, 175.0, 330.0, 0.0]), cfg)
    assert names == ["front", "side", "back", "front", "overhead"]
    prior = load_prior(tiny_priors[("pixel", "epsilon")])
    pp = PromptProcessor(prior, cfg)
    assert pp.texts(torch.tensor([0.0]), torch.tensor([180.0])) == ["a corgi, back view"]
    assert not torch.equal(pp.unconditional(1), pp.plain(1))
    with pytest.raises(Splat3dError, match="empty"):
        PromptProcessor(prior, PromptConfig("  "))


def test_registry():
    assert set(REGISTRY) == {"sds", "vsd", "lvsd", "l2vsd"}
    with pytest.raises(Splat3dError, match="choose one of"):
        make_guidance("nope", None, None)


@pytest.mark.parametrize("method", sorted(REGISTRY))
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: "-".join(k))
def test_every_method_steps_safely(tiny_priors, method, kind):
    prior, guidance = setup(tiny_priors[kind], method)
    images, cams = batch(prior)
    frozen = frozen_state(prior)
    probe_x = torch.randn(1, *prior.encode_images(images[:1]).shape[1:])
    probe_t = torch.tensor([500])
    text = prior.encode_text(["a red cube"])
    before = pretrained_eps(prior, probe_x, probe_t, text, text, 7.5)
    lora_before = {k: v.detach().clone() for k, v in (guidance.score.params.items() if guidance.score else [])}

    for step in range(3):
        images.grad = None
        out = guidance(images, cams, step)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert images.grad is not None and images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()

    after = frozen_state(prior)
    assert all(torch.equal(frozen[k], after[k]) for k in frozen), "the frozen prior changed"
    assert torch.equal(before, pretrained_eps(prior, probe_x, probe_t, text, text, 7.5))
    if method == "sds":
        assert guidance.score is None and not getattr(prior.unet, "_hf_peft_config_loaded", False)
    else:
        changed = [k for k, v in guidance.score.params.items() if not torch.equal(v, lora_before[k])]
        assert any("lora_" in k for k in changed) and any("class_embedding" in k for k in changed)


def randomize_lora(guidance, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guidance.score.params.values():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


@pytest.mark.parametrize("dtype, tol, h", [(torch.float64, 1e-7, 1e-5), (torch.float32, 1e-2, 1e-2)])
@pytest.mark.parametrize("kind", [("pixel", "epsilon"), ("latent", "v_prediction")], ids=lambda k: "-".join(k))
def test_linear_term_matches_central_difference(tiny_priors, dtype, tol, h, kind):
    prior, guidance = setup(tiny_priors[kind], "l2vsd", dtype=dtype)
    score = guidance.score
    assert all(p.dtype == dtype for p in score.params.values())
    randomize_lora(guidance)
    images, cams = batch(prior, dtype=dtype)
    inputs = guidance.prepare(images, cams, 0)
    assert inputs.camera.abs().sum() > 0
    camera = inputs.camera.to(dtype)
    g = torch.Generator().manual_seed(3)
    direction = {n: torch.randn(p.shape, generator=g, dtype=dtype) * 0.1 for n, p in score.params.items()}
    eps, linear = score.eps_and_jvp(inputs.x_t.to(dtype), inputs.draw.t, inputs.text, camera, direction)

    def shifted(sign):
        params = {n: p.detach() + sign * h * direction[n] for n, p in score.params.items()}
        with torch.no_grad(), score.lora_branch():
            return score._call(inputs.x_t.to(dtype), inputs.draw.t, inputs.text, camera, params)

    central = (shifted(+1) - shifted(-1)) / (2 * h)
    rel = ((linear - central).norm() / central.norm()).item()
    assert central.norm() > 0 and rel < tol, f"relative error {rel:.2e}"
    torch.testing.assert_close(eps, score.eps(inputs.x_t.to(dtype), inputs.draw.t, inputs.text, camera))


def test_zero_lookahead_is_exactly_vsd(tiny_priors):
    folder = tiny_priors[("pixel", "v_prediction")]
    results = {}
    for method in ("vsd", "l2vsd"):
        prior, guidance = setup(folder, method, lookahead_scale=0.0)
        images, cams = batch(prior)
        grads = []
        for step in range(3):
            images.grad = None
            guidance(images, cams, step).loss.backward()
            grads.append(images.grad.clone())
        results[method] = (grads, {k: v.detach().clone() for k, v in guidance.score.params.items()})
    for a, b in zip(results["vsd"][0], results["l2vsd"][0]):
        assert torch.equal(a, b)
    assert all(torch.equal(results["vsd"][1][k], results["l2vsd"][1][k]) for k in results["vsd"][1])


def test_nonzero_lookahead_changes_the_gradient(tiny_priors):
    folder = tiny_priors[("pixel", "epsilon")]
    grads = {}
    for eta in (0.0, 1.0):
        prior, guidance = setup(folder, "l2vsd", lookahead_scale=eta)
        images, cams = batch(prior)
        for step in range(2):
            images.grad = None
            guidance(images, cams, step).loss.backward()
        grads[eta] = images.grad.clone()
    assert not torch.allclose(grads[0.0], grads[1.0])


def test_lvsd_is_vsd_after_the_lora_step(tiny_priors):
    folder = tiny_priors[("latent", "epsilon")]
    prior_a, lvsd = setup(folder, "lvsd")
    prior_b, vsd = setup(folder, "vsd")
    images_a, cams = batch(prior_a)
    images_b = images_a.detach().clone().requires_grad_(True)
    lvsd(images_a, cams, 0).loss.backward()

    inputs = vsd.prepare(images_b, cams, 0)
    vsd.score.train_step(inputs.z, inputs.draw, inputs.text, inputs.camera)
    eps_phi = vsd.score.eps(inputs.x_t, inputs.draw.t, inputs.text, inputs.camera)
    vsd.output(inputs, eps_phi).loss.backward()
    assert torch.equal(images_a.grad, images_b.grad)


def test_linear_term_variants_agree(tiny_priors):
    prior, guidance = setup(tiny_priors[("pixel", "epsilon")], "l2vsd")
    score = guidance.score
    randomize_lora(guidance)
    images, cams = batch(prior)
    inputs = guidance.prepare(images, cams, 0)
    args = (inputs.x_t, inputs.draw.t, inputs.text, inputs.camera)
    g = torch.Generator().manual_seed(5)
    direction = {n: torch.randn(p.shape, generator=g) * 1e-2 for n, p in score.params.items()}
    _, exact = score.eps_and_jvp(*args, direction)
    _, fd = score.eps_and_finite_difference(*args, direction, h=0.1)
    rel_fd = ((fd - exact).norm() / exact.norm()).item()
    assert rel_fd < 2e-2, f"finite_difference vs exact: {rel_fd:.2e}"
    # With the direction on the last LoRA layer only, last_layer is exact.
    last = set(last_layer(direction))
    assert 0 < len(last) < len([n for n in score.params if "lora_" in n])
    only_last = {n: (d if n in last else torch.zeros_like(d)) for n, d in direction.items()}
    _, exact_last = score.eps_and_jvp(*args, only_last)
    _, on_last_layer = score.eps_and_jvp(*args, last_layer(direction))
    torch.testing.assert_close(on_last_layer, exact_last, rtol=1e-5, atol=1e-7)
    # and it carries only part of the full term
    assert (on_last_layer - exact).norm() > 1e-3 * exact.norm()


@pytest.mark.parametrize("method", ["vsd", "l2vsd"])
def test_state_round_trip_is_bit_identical(tiny_priors, tmp_path, method):
    folder = tiny_priors[("latent", "v_prediction")]
    prior_a, a = setup(folder, method, seed=4)
    images, cams = batch(prior_a)
    for step in range(2):
        a(images, cams, step).loss.backward()
    torch.save(a.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert not any("lora_" not in k for k in state["score"]["lora"]), "only LoRA weights are saved"

    prior_b, b = setup(folder, method, seed=99)
    b.load_state_dict(state)
    outputs = []
    for guidance in (a, b):
        x = images.detach().clone().requires_grad_(True)
        out = guidance(x, cams, 2)
        out.loss.backward()
        outputs.append((out.loss.detach(), x.grad, {k: v.detach().clone() for k, v in guidance.score.params.items()}))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert all(torch.equal(outputs[0][2][k], outputs[1][2][k]) for k in outputs[0][2])


def test_frozen_weights_are_not_in_the_state(tiny_priors):
    prior, guidance = setup(tiny_priors[("pixel", "epsilon")], "l2vsd")
    state = guidance.state_dict()
    n_saved = sum(v.numel() for v in state["score"]["lora"].values())
    n_unet = sum(p.numel() for n, p in prior.unet.named_parameters() if "lora_" not in n)
    assert 0 < n_saved < n_unet / 5
    assert LORA_ADAPTER in prior.unet.peft_config


@pytest.mark.gpu
def test_fp16_on_cuda(tiny_priors):
    prior = load_prior(tiny_priors[("latent", "epsilon")], device="cuda")
    assert prior.dtype == torch.float16
    guidance = make_guidance("l2vsd", prior, PromptProcessor(prior, PromptConfig("a red cube")))
    images = torch.rand(2, 3, 64, 64, device="cuda", requires_grad=True)
    cams = orbit_cameras(torch.tensor([10.0, 30.0]), torch.tensor([0.0, 90.0]), 3.0, 40.0, 64, 64).to("cuda")
    out = guidance(images, cams, 0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(images.grad).all()
    assert os.environ.get("TORCH_EXTENSIONS_DIR")


def test_timestep_annealing():
    """The largest timestep falls linearly from max_step_percent to max_step_percent_annealed."""
    config = GuidanceConfig(min_step_percent=0.02, max_step_percent=0.98, max_step_percent_annealed=0.5,
                            anneal_start_step=10, anneal_end_step=20)  # fmt: skip
    bounds = [timestep_bounds(config, step, 1000) for step in (0, 9, 10, 15, 20, 100)]
    assert bounds == [(20, 980), (20, 980), (20, 980), (20, 740), (20, 500), (20, 500)]
    # without an end step the drop takes one step; without a start it never happens
    sudden = GuidanceConfig(anneal_start_step=10)
    assert [timestep_bounds(sudden, step, 1000)[1] for step in (10, 11, 500)] == [980, 500, 500]
    assert timestep_bounds(GuidanceConfig(), 10**6, 1000) == (20, 980)
    # the range stays inside [0, T - 1] and never inverts
    assert timestep_bounds(GuidanceConfig(max_step_percent=1.0), 0, 1000) == (20, 999)
    crossed = GuidanceConfig(min_step_percent=0.6, max_step_percent_annealed=0.5, anneal_start_step=0)
    assert timestep_bounds(crossed, 5, 1000) == (600, 600)


def test_target_loss_gradient_is_the_given_gradient():
    """0.5 ||z - sg(z - grad)||² / B has gradient exactly grad / B w.r.t. z; non-finite entries become 0."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    grad = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    target_loss(z, grad).backward()
    torch.testing.assert_close(z.grad, grad / 3, rtol=0, atol=1e-15)
    z.grad = None
    grad[0, 0, 0, 0] = float("nan")
    target_loss(z, grad).backward()
    assert z.grad[0, 0, 0, 0] == 0 and torch.isfinite(z.grad).all()


def test_sds_gradient_value(tiny_priors):
    """SDS's gradient on the images is dz/dx · w(t) (eps_pretrained(x_t) - eps) / B, computed here by hand."""
    prior, sds = setup(tiny_priors[("pixel", "epsilon")], "sds", guidance_scale=100.0)
    images, cams = batch(prior)
    sds(images, cams, 0).loss.backward()

    _, twin = setup(tiny_priors[("pixel", "epsilon")], "sds", guidance_scale=100.0)  # the same seed: same draws
    x = images.detach()
    z = 2.0 * x - 1.0  # a pixel prior sees the render in [-1, 1]
    inputs = twin.prepare(x, cams, 0)
    assert torch.equal(inputs.z, z)
    t, noise = inputs.draw.t, inputs.draw.noise
    x_t = (
        prior.alphas_cumprod[t].sqrt().reshape(-1, 1, 1, 1) * z
        + (1 - prior.alphas_cumprod[t]).sqrt().reshape(-1, 1, 1, 1) * noise
    )
    text = twin.prompt.conditional(*cams.angles())
    eps_pretrained = pretrained_eps(prior, x_t, t, text, twin.prompt.unconditional(2), 100.0)
    w = (1 - prior.alphas_cumprod[t]).reshape(-1, 1, 1, 1)
    expected = 2.0 * w * (eps_pretrained - noise) / images.shape[0]
    torch.testing.assert_close(images.grad, expected, rtol=1e-5, atol=1e-7)
    assert images.grad.abs().sum() > 0


def test_latent_gradient_decoded_and_encoder(tiny_priors):
    """decoded: d loss / d images = (x - D(z - grad)) / B, by hand, and no gradient through the encoder;
    encoder: the chain rule through the VAE, a different gradient from the same draws."""
    folder = tiny_priors[("latent", "epsilon")]
    prior, sds = setup(folder, "sds", guidance_scale=100.0)
    images, cams = batch(prior)
    sds(images, cams, 0).loss.backward()

    _, twin = setup(folder, "sds", guidance_scale=100.0)  # the same seed: the same draws
    x = images.detach()
    inputs = twin.prepare(x, cams, 0)
    assert not inputs.z.requires_grad and torch.equal(inputs.pixels, x)
    w = (1 - prior.alphas_cumprod[inputs.draw.t]).reshape(-1, 1, 1, 1)
    grad = w * (inputs.eps_pretrained - inputs.draw.noise)
    target = prior.decode(inputs.z - grad, clamp=False)
    torch.testing.assert_close(images.grad, (x - target) / x.shape[0], rtol=1e-5, atol=1e-7)

    # decoded_pull p < 1: target x + (D(z - grad) - D(z)) + p (D(z) - x), a weaker pull toward D(z).
    _, half = setup(folder, "sds", guidance_scale=100.0, decoded_pull=0.25)
    weak = x.clone().requires_grad_(True)
    half(weak, cams, 0).loss.backward()
    now = prior.decode(inputs.z, clamp=False)
    target = x + (prior.decode(inputs.z - grad, clamp=False) - now) + 0.25 * (now - x)
    torch.testing.assert_close(weak.grad, (x - target) / x.shape[0], rtol=1e-4, atol=1e-6)

    _, chain = setup(folder, "sds", guidance_scale=100.0, latent_gradient="encoder")
    again = x.clone().requires_grad_(True)
    chain(again, cams, 0).loss.backward()
    assert again.grad.abs().sum() > 0 and not torch.allclose(again.grad, images.grad)
    with pytest.raises(Splat3dError, match="latent gradient"):
        GuidanceConfig(latent_gradient="pixels")
    with pytest.raises(Splat3dError, match="decoded_pull"):
        GuidanceConfig(decoded_pull=1.5)


# ------------------------------------------------------------ Janus options
def test_perpendicular_component():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, 5, generator=g)
    y = y.double()
    p = perpendicular(x, y)
    assert (p * y).sum((1, 2, 3)).abs().max() < 1e-12
    torch.testing.assert_close(perpendicular(2.0 * y, y), torch.zeros_like(y), rtol=0, atol=1e-12)


def test_perp_neg_changes_only_side_and_back_views(tiny_priors):
    """Perp-Neg reaches the UNet: eps_pretrained moves on side and back views, not on the front one."""
    eps = {}
    for weight in (0.0, 2.0):
        prior, guidance = setup(tiny_priors[("latent", "epsilon")], "sds", perp_neg_side=weight, perp_neg_back=weight)
        size = prior.image_size
        images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        cams = orbit_cameras(torch.full((3,), 15.0), torch.tensor([10.0, 90.0, 180.0]), 3.0, 40.0, size, size)
        assert guidance.prompt.views(*cams.angles()) == ["front", "side", "back"]
        eps[weight] = guidance.prepare(images, cams, 0).eps_pretrained
    change = [((eps[2.0][i] - eps[0.0][i]).norm() / eps[0.0][i].norm()).item() for i in range(3)]
    # The front row only sees float noise (the UNet's batch grows by the negatives).
    assert change[0] < 1e-4 and change[1] > 1e-2 and change[2] > 1e-2, change


def test_perp_neg_against_the_prompt_itself_is_plain_cfg(tiny_priors):
    """A negative along the positive direction has no perpendicular part: nothing changes."""
    prior, guidance = setup(tiny_priors[("pixel", "epsilon")], "sds")
    images, cams = batch(prior)
    inputs = guidance.prepare(images.detach(), cams, 0)
    cond, uncond = guidance.prompt.conditional(*cams.angles()), guidance.prompt.unconditional(2)
    plain = pretrained_eps(prior, inputs.x_t, inputs.draw.t, cond, uncond, 7.5)
    same = pretrained_eps(prior, inputs.x_t, inputs.draw.t, cond, uncond, 7.5, cond, torch.tensor([3.0, 3.0]))
    # Only float noise: the UNet's batch grows by the negative rows, which changes its rounding.
    assert (same - plain).norm() < 1e-4 * plain.norm(), ((same - plain).norm(), plain.norm())


def test_view_guidance_is_compositional_cfg_on_the_view_phrase(tiny_priors):
    """eps = eps_u + s (eps_plain - eps_u) + s_v (eps_view - eps_plain): by hand, with and without Perp-Neg;
    s_v = s is plain CFG."""
    prior, guidance = setup(tiny_priors[("pixel", "epsilon")], "sds")
    images, cams = batch(prior)
    inputs = guidance.prepare(images.detach(), cams, 0)
    x_t, t = inputs.x_t, inputs.draw.t
    cond, uncond, plain = (
        guidance.prompt.conditional(*cams.angles()),
        guidance.prompt.unconditional(2),
        guidance.prompt.plain(2),
    )
    assert not torch.equal(cond, plain)  # "a red cube, front view" vs "a red cube"
    with torch.no_grad():
        e_c, e_u, e_p = (prior.to_epsilon(prior.unet_output(x_t, t, c), x_t, t) for c in (cond, uncond, plain))
    composed = pretrained_eps(prior, x_t, t, cond, uncond, 7.5, plain=plain, view_scale=20.0)
    expected = e_u + 7.5 * (e_p - e_u) + 20.0 * (e_c - e_p)
    assert (composed - expected).norm() < 1e-4 * expected.norm()  # float noise of a larger batch, x20
    same = pretrained_eps(prior, x_t, t, cond, uncond, 7.5, plain=plain, view_scale=7.5)
    assert torch.equal(same, pretrained_eps(prior, x_t, t, cond, uncond, 7.5))
    # with Perp-Neg's negative along the (composed) positive direction: still nothing to push away from
    with_neg = pretrained_eps(prior, x_t, t, cond, uncond, 7.5, cond, torch.tensor([0.0, 3.0]), plain, 20.0)
    assert torch.isfinite(with_neg).all() and (with_neg[0] - composed[0]).norm() < 1e-4 * composed[0].norm()


def test_view_guidance_reaches_the_step(tiny_priors):
    eps = [setup(tiny_priors[("latent", "epsilon")], "vsd", view_guidance_scale=v)[1] for v in (None, 30.0)]
    prior = load_prior(tiny_priors[("latent", "epsilon")], device="cpu")
    images, cams = batch(prior)
    a, b = (g.prepare(images.detach(), cams, 0).eps_pretrained for g in eps)
    assert (a - b).norm() > 1e-2 * a.norm()


def test_perp_neg_needs_view_dependent_prompts():
    from splat3d.run.config import RunConfig

    with pytest.raises(Splat3dError, match="view-dependent"):
        RunConfig(prompt=PromptConfig(view_dependent=False), guidance=GuidanceConfig(perp_neg_back=1.0))
    with pytest.raises(Splat3dError, match="0 \\(off\\) or more"):
        GuidanceConfig(perp_neg_side=-1.0)
    with pytest.raises(Splat3dError, match="view_guidance_scale guides the view phrase"):
        RunConfig(prompt=PromptConfig(view_dependent=False), guidance=GuidanceConfig(view_guidance_scale=20.0))
    with pytest.raises(Splat3dError, match="view_guidance_scale must be 0 or more"):
        GuidanceConfig(view_guidance_scale=-1.0)
    with pytest.raises(Splat3dError, match="camera_condition_drop above 0"):
        GuidanceConfig(camera_guidance_scale=0.5, camera_condition_drop=0.0)


@pytest.mark.parametrize("method", ["vsd", "l2vsd"])
def test_camera_guidance_mixes_in_the_camera_free_score(tiny_priors, method):
    """ESD's CFG on the LoRA's camera: eps_phi = eps(no camera) + s (eps(camera) - eps(no camera))."""
    prior, guidance = setup(tiny_priors[("latent", "v_prediction")], method, camera_guidance_scale=0.5)
    score = guidance.score
    assert score.camera_scale == 0.5
    randomize_lora(guidance)  # the camera embedding starts at zero, where the camera changes nothing
    images, cams = batch(prior)
    inputs = guidance.prepare(images.detach(), cams, 0)
    args = (inputs.x_t, inputs.draw.t, inputs.text)
    mixed = score.eps(*args, inputs.camera)
    score.camera_scale = 1.0
    with_camera, without = score.eps(*args, inputs.camera), score.eps(*args, torch.zeros_like(inputs.camera))
    assert (with_camera - without).norm() > 1e-4 * without.norm()
    torch.testing.assert_close(mixed, 0.5 * (with_camera + without), rtol=1e-4, atol=1e-6)
    score.camera_scale = 0.5
    images.grad = None
    guidance(images, cams, 1).loss.backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
