"""Priors whose own UNet takes the camera (MVDream's camera embedding): the features, every UNet branch of
score distillation, 2D sampling, and the training stage that adds it to a prior (CPU, tiny models)."""

import dataclasses

import pytest
import torch

from splat3d.distill.guidance import GuidanceConfig, make_guidance
from splat3d.distill.guidance.base import pretrained_eps
from splat3d.distill.priors import camera_condition, camera_features, load_prior
from splat3d.distill.priors.tiny import make_tiny_prior
from splat3d.distill.prompts import PromptConfig, PromptProcessor, split_view
from splat3d.distill.sample import sample_images, view_cameras
from splat3d.errors import Splat3dError
from splat3d.render.cameras import orbit_cameras
from splat3d.shapes.train_prior import PriorTrainConfig, PriorTrainer


@pytest.fixture(scope="module")
def camera_prior(tmp_path_factory):
    return make_tiny_prior(tmp_path_factory.mktemp("camera-prior"), kind="latent", sample_size=8, camera=True)


def _cameras(size, azimuth=(0.0, 150.0)):
    return orbit_cameras(torch.tensor([15.0, 40.0]), torch.tensor(azimuth), 3.0, 40.0, size, size)


def test_camera_features_of_orbit_cameras():
    el, az = torch.tensor([15.0, 40.0, 75.0]), torch.tensor([0.0, 150.0, -90.0])
    c2w = orbit_cameras(el, az, torch.tensor([2.6, 3.0, 3.2]), 40.0, 8, 8).c2w.reshape(3, 16)
    torch.testing.assert_close(camera_condition(c2w), camera_features(el, az), atol=1e-5, rtol=0)
    assert camera_features(el, az)[:, 0].eq(1).all()  # "a camera is given"
    assert camera_condition(torch.zeros(2, 16)).eq(0).all()  # a dropped camera: no camera


def test_a_camera_prior_hears_the_camera_in_every_pretrained_branch(camera_prior, tiny_priors):
    prior = load_prior(camera_prior, device="cpu")
    assert prior.camera_conditioned and not load_prior(tiny_priors[("latent", "epsilon")]).camera_conditioned
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500, 500])
    text = prior.encode_text(["a red cube, front view", "a red cube, back view"])
    uncond = prior.encode_text(["", ""])
    front = _cameras(32, (0.0, 0.0)).c2w.reshape(2, 16)
    back = _cameras(32, (180.0, 180.0)).c2w.reshape(2, 16)
    a, b = (pretrained_eps(prior, x, t, text, uncond, 7.5, camera=c) for c in (front, back))
    assert not torch.allclose(a, b), "the camera reaches the UNet"
    # no camera is the zero camera, not an error
    torch.testing.assert_close(prior.unet_output(x, t, text), prior.unet_output(x, t, text, torch.zeros(2, 16)))
    # and a prior without a camera embedding ignores the camera
    plain = load_prior(tiny_priors[("latent", "epsilon")], device="cpu")
    text = plain.encode_text(["a red cube", "a red cube"])
    x = torch.randn(2, 4, plain.unet.config.sample_size, plain.unet.config.sample_size, generator=g)
    without = pretrained_eps(plain, x, t, text, text, 7.5)
    assert torch.equal(without, pretrained_eps(plain, x, t, text, text, 7.5, camera=front))


def test_prior_camera_scale_guides_the_camera_apart(camera_prior):
    """eps = eps_u + s (eps(c0) - eps_u) + s_c (eps(c) - eps(c0)): c under the camera, c0 with no camera."""
    prior = load_prior(camera_prior, device="cpu")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500, 300])
    text, uncond = prior.encode_text(["a red cube", "a red cube"]), prior.encode_text(["", ""])
    front = _cameras(32, (0.0, 30.0)).c2w.reshape(2, 16)
    with torch.no_grad():
        raw = lambda txt, cam: prior.to_epsilon(prior.unet_output(x, t, txt, cam), x, t)  # noqa: E731
        c, c0, u = raw(text, front), raw(text, torch.zeros_like(front)), raw(uncond, front)
        guided = pretrained_eps(prior, x, t, text, uncond, 7.5, camera=front, camera_scale=20.0)
        plain = pretrained_eps(prior, x, t, text, uncond, 7.5, camera=front)
    torch.testing.assert_close(guided, u + 7.5 * (c0 - u) + 20.0 * (c - c0), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(guided, plain), "the scale changes the guidance"
    assert torch.equal(plain, pretrained_eps(prior, x, t, text, uncond, 7.5, camera=front, camera_scale=7.5))
    with pytest.raises(Splat3dError, match="prior_camera_scale"):
        GuidanceConfig(prior_camera_scale=20.0, perp_neg_side=1.0)
    # 2D sampling takes the same scale: plain CFG at s_c = s, other images above it
    prompts = ["a red cube", "a red cube"]
    same = sample_images(prior, prompts, steps=2, cameras=front, camera_guidance_scale=3.0)
    assert torch.equal(same, sample_images(prior, prompts, steps=2, cameras=front))
    assert not torch.equal(same, sample_images(prior, prompts, steps=2, cameras=front, camera_guidance_scale=30.0))


def _steps(folder, method, n=3, **config):
    prior = load_prior(folder, device="cpu")
    prompt = PromptProcessor(prior, PromptConfig("a red cube"))
    guidance = make_guidance(method, prior, prompt, GuidanceConfig(**config))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, prior.image_size, prior.image_size, generator=g).requires_grad_(True)
    cams = _cameras(prior.image_size)
    grads = []
    for step in range(n):
        images.grad = None
        guidance(images, cams, step).loss.backward()
        grads.append(images.grad.clone())
    return prior, guidance, grads


def test_the_vsd_family_on_a_camera_prior(camera_prior):
    prior, vsd, vsd_grads = _steps(camera_prior, "vsd")
    own = prior.unet.class_embedding
    assert own is vsd.score.prior_embedding and own.linear_1.weight.requires_grad is False
    # the LoRA's own camera embedding learns (zero-initialised last layer), the prior's stays frozen
    assert vsd.score.camera_embedding[2].weight.abs().sum() > 0
    assert all("class_embedding.lora." in k for k in vsd.score.params if "class_embedding" in k)
    fresh = load_prior(camera_prior, device="cpu").unet.class_embedding.state_dict()
    assert all(torch.equal(v, own.state_dict()[k]) for k, v in fresh.items())
    # L2-VSD at eta 0 is still VSD, bit for bit, and both linear terms run
    _, _, l2_grads = _steps(camera_prior, "l2vsd", lookahead_scale=0.0)
    assert all(torch.equal(a, b) for a, b in zip(vsd_grads, l2_grads))
    for term in ("exact", "finite_difference"):
        _, _, grads = _steps(camera_prior, "l2vsd", n=2, linear_term=term)
        assert all(torch.isfinite(g).all() for g in grads)
    # ESD's camera-free score zeroes the prior's camera as well as the LoRA's
    _, esd, grads = _steps(camera_prior, "vsd", n=2, camera_guidance_scale=0.5)
    assert all(torch.isfinite(g).all() for g in grads)


def test_2d_samples_ask_for_the_view_of_their_phrase(camera_prior):
    c2w = view_cameras(["a red cube, front view", "a red cube, back view", "a red cube, overhead view", "a red cube"])
    el, az = orbit_cameras(torch.tensor([15.0, 15.0, 75.0]), torch.tensor([0.0, 180.0, 0.0]), 3.0, 40.0, 8, 8).angles()
    torch.testing.assert_close(camera_condition(c2w[:3]), camera_features(el, az), atol=1e-5, rtol=0)
    assert c2w[3].eq(0).all(), "no view phrase: no camera"
    prior = load_prior(camera_prior, device="cpu")
    seen = []
    original = prior.unet_output
    prior.unet_output = lambda x, t, text, camera=None: seen.append(camera) or original(x, t, text, camera)
    images = sample_images(prior, ["a red cube, back view", "a red cube"], steps=2)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert all(torch.equal(c, torch.cat([view_cameras(["a red cube, back view", "a red cube"])] * 2)) for c in seen)
    # or the cameras it is given, whatever the phrase says
    seen.clear()
    given = view_cameras(["a red cube, side view", "a red cube, front view"])
    sample_images(prior, ["a red cube, back view", "a red cube"], steps=2, cameras=given)
    assert seen and all(torch.equal(c, torch.cat([given] * 2)) for c in seen)


TINY = PriorTrainConfig(
    steps=2, batch_size=8, resolution=16, views_per_object=16, colours=("red",), kinds=("cube", "house"),
    block_out_channels=(16, 32), cross_attention_dim=32, checkpoint_every=2, ema_decay=0.9, classifier_steps=5,
    caption_dropout=0.0, plain_caption=0.0,  # every caption names its view, unless the stage strips it
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    """A TINY prior trained and exported once; the camera stages below start from it (read only)."""
    root = tmp_path_factory.mktemp("camera-source")
    return PriorTrainer(TINY, root / "a", cache_dir=root / "cache", log=lambda m: None).run(), root / "cache"


def test_camera_stage_starts_as_its_prior_and_teaches_the_view_through_the_camera(tmp_path, monkeypatch, tiny_source):
    source, cache = tiny_source
    cfg = dataclasses.replace(TINY, view_steps=2, camera_condition=True)
    trainer = PriorTrainer(cfg, tmp_path / "b", cache_dir=cache, log=lambda m: None, start_from=source)
    # the new embedding learns at its own rate, the rest at the UNet's
    camera = {id(p) for p in trainer.unet.class_embedding.parameters()}
    rates = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert len(rates) == len(list(trainer.modules.parameters()))
    assert all(rates[i] == (cfg.camera_lr if i in camera else cfg.lr) for i in rates) and cfg.camera_lr != cfg.lr
    # the new camera embedding starts at zero: the prior as it was, whatever the camera
    old = load_prior(source, device="cpu")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([300, 700])
    text = old.encode_text(["a red house, front view", "a red cube"])
    labels = camera_features(torch.tensor([15.0, 15.0]), torch.tensor([0.0, 180.0]))
    with torch.no_grad():
        new = trainer.ema["unet"](x, t, encoder_hidden_states=text, class_labels=labels).sample
    torch.testing.assert_close(new, old.unet_output(x, t, text), atol=1e-6, rtol=0)
    # through the stage, the drawn half of each batch (houses) carries no view phrase, the camera instead
    calls = []
    unet_forward = trainer.unet.forward
    record = lambda *a, **k: calls.append(k["class_labels"]) or unet_forward(*a, **k)  # noqa: E731
    monkeypatch.setattr(trainer.unet, "forward", record)
    import splat3d.shapes.train_prior as tp

    texts = []
    real = tp.captions
    monkeypatch.setattr(tp, "captions", lambda *a, **k: texts.append(real(*a, **k)) or texts[-1])
    folder = trainer.run()
    assert trainer.step == 4 and len(calls) == 2
    assert all(split_view(text)[1] is None and "house" in text for batch in texts for text in batch[:4])
    assert all(split_view(text)[1] is not None for batch in texts for text in batch[4:]), "the rest keep theirs"
    assert all(c.shape == (8, 7) and (c[:, 0] == 1).sum() >= 4 for c in calls)  # cameras, a few dropped at most
    prior = load_prior(folder, device="cpu")
    assert prior.camera_conditioned and prior.unet.class_embedding.linear_2.weight.abs().sum() > 0
    # the embedding's EMA warms up from the stage's start, not from the prior's step count
    assert trainer.camera_start == TINY.steps
    trainer.step = trainer.camera_start = 10_000
    trainer.cfg = dataclasses.replace(cfg, view_steps=20_000, ema_decay=0.999)
    before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer.train_step()
    raw, ema = trainer.modules.state_dict(), trainer.ema.state_dict()
    for name, decay in (("unet.class_embedding.linear_2.weight", 0.1), ("unet.conv_in.weight", 0.999)):
        torch.testing.assert_close(ema[name], decay * before[name] + (1 - decay) * raw[name])
    assert torch.load(trainer.save(), weights_only=False)["camera_start"] == 10_000  # a resume keeps it


# ---------------------------------------------------------------- the camera as cross-attention tokens
@pytest.fixture(scope="module")
def token_prior(tmp_path_factory):
    return make_tiny_prior(tmp_path_factory.mktemp("token-prior"), kind="latent", sample_size=8, camera="tokens")


def test_a_token_camera_prior_hears_the_camera_through_attention(token_prior):
    prior = load_prior(token_prior, device="cpu")
    assert prior.camera_conditioned and prior.unet.class_embedding is None
    g = torch.Generator().manual_seed(0)
    torch.nn.init.normal_(prior.unet.encoder_hid_proj.image_embeds.weight, generator=g)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500, 500])
    text, uncond = prior.encode_text(["a red cube", "a red cube"]), prior.encode_text(["", ""])
    front, back = (_cameras(32, (az, az)).c2w.reshape(2, 16) for az in (0.0, 180.0))
    a, b = (pretrained_eps(prior, x, t, text, uncond, 7.5, camera=c) for c in (front, back))
    assert not torch.allclose(a, b), "the camera reaches the UNet"
    calls = []
    forward = prior.unet.forward
    prior.unet.forward = lambda *a, **k: calls.append(k) or forward(*a, **k)
    torch.testing.assert_close(prior.unet_output(x, t, text), prior.unet_output(x, t, text, torch.zeros(2, 16)))
    tokens = calls[0]["added_cond_kwargs"]["image_embeds"]
    assert tokens.shape == (2, 32) and tokens.eq(0).all() and "class_labels" not in calls[0]


def test_the_vsd_family_on_a_token_camera_prior(token_prior):
    prior, vsd, vsd_grads = _steps(token_prior, "vsd")
    assert vsd.score.prior_embedding is None and vsd.score.camera_embedding[2].weight.abs().sum() > 0
    assert not prior.unet.encoder_hid_proj.image_embeds.weight.requires_grad, "the prior's tokens stay frozen"
    calls = []
    forward = prior.unet.forward
    prior.unet.forward = lambda *a, **k: calls.append(k) or forward(*a, **k)
    vsd(torch.rand(2, 3, prior.image_size, prior.image_size), _cameras(prior.image_size), 3)
    # every call, the pretrained branches' and the LoRA's, gives the prior its camera tokens
    assert calls and all(k["added_cond_kwargs"]["image_embeds"][:, 0].eq(1).any() for k in calls)
    assert any(k.get("class_labels") is not None and k["class_labels"].shape[1] == 16 for k in calls), "the LoRA's"
    _, _, l2_grads = _steps(token_prior, "l2vsd", lookahead_scale=0.0)
    assert all(torch.equal(a, b) for a, b in zip(vsd_grads, l2_grads))
    _, _, grads = _steps(token_prior, "l2vsd", n=2, linear_term="exact")
    assert all(torch.isfinite(g).all() for g in grads)


def test_token_camera_stage_starts_from_its_prior_and_learns_the_tokens(tmp_path, tiny_source):
    source, cache = tiny_source
    cfg = dataclasses.replace(TINY, view_steps=2, camera_condition=True, camera_tokens=True)
    trainer = PriorTrainer(cfg, tmp_path / "b", cache_dir=cache, log=lambda m: None, start_from=source)
    proj = trainer.unet.encoder_hid_proj
    camera = {id(p) for p in proj.image_embeds.parameters()}
    rates = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(rates[i] == (cfg.camera_lr if i in camera else cfg.lr) for i in rates)
    # the text passes unchanged, after 10 zero camera tokens, and the rest of the UNet is the source prior's
    text = load_prior(source, device="cpu").encode_text(["a red house", "a red cube"])
    image = camera_features(torch.tensor([15.0, 15.0]), torch.tensor([0.0, 180.0]))
    with torch.no_grad():
        states = proj(text, torch.nn.functional.pad(image, (0, 32 - 7)))
    assert states.shape == (2, 10 + text.shape[1], 32) and states[:, :10].eq(0).all()
    torch.testing.assert_close(states[:, 10:], text)
    old = load_prior(source, device="cpu").unet.state_dict()
    assert all(torch.equal(v, old[k]) for k, v in trainer.unet.state_dict().items() if k in old)
    prior = load_prior(trainer.run(), device="cpu")
    assert prior.camera_conditioned and prior.unet.encoder_hid_proj.image_embeds.weight.abs().sum() > 0
    with pytest.raises(Exception, match="--camera"):
        dataclasses.replace(TINY, camera_tokens=True)
