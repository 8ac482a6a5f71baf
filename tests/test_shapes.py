"""The shapes world, prior training (tiny) and 2D sampling."""

import dataclasses
import json
import math

import imageio.v3 as iio
import pytest
import torch
from helpers import run_cli

from splat3d.distill.priors import load_prior
from splat3d.distill.prompts import PromptConfig, PromptProcessor, view_names
from splat3d.distill.sample import sample_images
from splat3d.errors import Splat3dError
from splat3d.render import render
from splat3d.render.cameras import orbit_cameras
from splat3d.scene import GaussianScene
from splat3d.scene.gaussians import rgb_to_sh0
from splat3d.scene.ply import write_ply
from splat3d.shapes.train_prior import PriorTrainConfig, PriorTrainer, captions, detail_pixels
from splat3d.shapes.world import COLOURS, FRONTED, KINDS, make_object, parse_prompt


def test_vocabulary_size():
    assert len(COLOURS) >= 6 and len(KINDS) >= 8 and set(FRONTED) <= set(KINDS)
    for kind in ("sphere", "cube", "cone", "cylinder", "torus", "pyramid"):
        assert kind in KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_objects_are_centred_canonical_and_fronted_where_said(kind):
    scene = make_object("red", kind)
    means = scene.means.detach()
    box_centre = (means.amax(0) + means.amin(0)) / 2
    assert means.abs().max() < 0.75 and (box_centre.abs() < 0.15).all(), box_centre
    assert (means.amax(0) - means.amin(0)).max() > 0.6, "canonical size is about 1.2 units"
    cams = orbit_cameras(10.0, torch.tensor([0.0, 180.0]), 3.0, 40.0, 48, 48)
    images = render(scene, cams, 1.0).images
    # The simple solids look the same after a half turn; the fronted ones do not.
    changed = ((images[0] - images[1]).abs().amax(0) > 0.2).float().mean().item()
    if kind in FRONTED:
        assert changed > 0.03, f"{kind}: front and back should differ ({changed:.4f} of pixels)"
    else:
        assert changed < 0.02, f"{kind}: front and back should match ({changed:.4f} of pixels)"


def test_colours_come_out_right():
    cams = orbit_cameras(20.0, 30.0, 3.0, 40.0, 32, 32)
    for colour, rgb in COLOURS.items():
        out = render(make_object(colour, "cube"), cams, 1.0)
        inside = out.alphas[0, 0] > 0.9
        mean = out.images[0][:, inside].mean(dim=1)
        assert (mean - torch.tensor(rgb)).abs().max() < 0.15, colour


def test_parse_prompt():
    assert parse_prompt("a fluffy corgi") is None
    spec = parse_prompt("a blue torus, side view")
    assert (spec.colour, spec.kind) == ("blue", "torus")


TINY = PriorTrainConfig(
    steps=4, batch_size=8, resolution=16, views_per_object=16, colours=("red", "blue"), kinds=("cube", "sphere"),
    block_out_channels=(16, 32), cross_attention_dim=32, checkpoint_every=2, ema_decay=0.9, classifier_steps=20,
)  # fmt: skip


def test_prior_training_resumes_exactly_and_exports(tmp_path):
    straight = PriorTrainer(TINY, tmp_path / "a", cache_dir=tmp_path / "cache", log=lambda m: None)
    straight.run()
    half = PriorTrainer(dataclasses.replace(TINY, steps=2), tmp_path / "b", cache_dir=tmp_path / "cache",
                        log=lambda m: None)  # fmt: skip
    half.run()
    resumed = PriorTrainer(TINY, tmp_path / "b", cache_dir=tmp_path / "cache", log=lambda m: None)
    assert resumed.step == 2
    folder = resumed.run()
    for (k, a), (_, b) in zip(straight.ema.state_dict().items(), resumed.ema.state_dict().items()):
        assert torch.equal(a, b), k
    assert list((tmp_path / "cache").glob("shapes-dataset-*.pt")), "the dataset is cached"
    prior = load_prior(folder, device="cpu")
    assert prior.image_size == 16 and not prior.is_latent
    assert prior.scheduler.config.clip_sample is True  # pixels live in [-1, 1]
    assert (folder / "classifier.safetensors").exists()
    with pytest.warns(UserWarning, match="does not know 'fluffy', 'corgi'; its vocabulary is: red, green"):
        PromptProcessor(prior, PromptConfig("a fluffy red corgi"))
    images = sample_images(prior, ["a red cube", "a blue sphere, side view"], steps=3)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    # Shipped in float16 (half the bytes), loaded in float32 with the same weights to float16 precision.
    from safetensors.torch import load_file

    resumed.cfg = dataclasses.replace(TINY, weights_dtype="float16")
    light = resumed.export(tmp_path / "light")
    assert {v.dtype for v in load_file(str(light / "unet" / "diffusion_pytorch_model.safetensors")).values()} == {
        torch.float16
    }
    light = load_prior(light, device="cpu", dtype=torch.float32)
    for (k, a), (_, b) in zip(prior.unet.state_dict().items(), light.unet.state_dict().items()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=k)


def test_view_guidance_in_sampling_guides_only_the_view_phrase(tiny_priors):
    from splat3d.distill.prompts import split_view

    assert split_view("a red house, front view") == ("a red house", "front")
    assert split_view("a red house") == ("a red house", None)
    prior = load_prior(tiny_priors[("latent", "epsilon")], device="cpu")
    prompts = ["a red cube, side view", "a red cube"]
    plain = sample_images(prior, prompts, steps=3, guidance_scale=3.0, view_guidance_scale=None)
    same = sample_images(prior, prompts, steps=3, guidance_scale=3.0, view_guidance_scale=3.0)
    strong = sample_images(prior, prompts, steps=3, guidance_scale=3.0, view_guidance_scale=30.0)
    assert torch.equal(plain, same)  # s_v = s is plain CFG, in its own batch
    assert (strong[0] - plain[0]).abs().max() > 1e-3  # the view phrase is pushed harder
    torch.testing.assert_close(strong[1], plain[1], rtol=0, atol=1e-4)  # no view phrase: nothing to push


def test_prior_sample_cli(tiny_priors, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, "prior", "sample", "a red cube", "--model", tiny_priors[("latent", "v_prediction")],
                           "--n", 3, "--steps", 4, "--out", out)  # fmt: skip
    assert code == 0, err
    assert iio.imread(out).shape[2] == 3
    code, _, err = run_cli(capsys, "prior", "sample", " ", "--out", out)
    assert code == 2 and "empty" in err
    code, _, err = run_cli(capsys, "prior", "sample", "a red cube", "--eta", 1.5, "--out", tmp_path / "x.png")
    assert code == 2 and "--eta must be between 0 and 1" in err and not (tmp_path / "x.png").exists()
    code, _, err = run_cli(capsys, "prior", "sample", "a red cube, front view", "--camera-guidance-scale", -1,
                           "--out", tmp_path / "x.png")  # fmt: skip
    assert code == 2 and "--camera-guidance-scale must be 0 or more" in err and not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    """A classifier trained briefly on two colours and two kinds (one with a front)."""
    from splat3d.shapes.evaluate import save_classifier, train_classifier
    from splat3d.shapes.train_prior import build_dataset

    tmp = tmp_path_factory.mktemp("classifier")
    cfg = dataclasses.replace(
        TINY, resolution=32, views_per_object=96, colours=("red", "blue"), kinds=("cube", "house")
    )
    model, accuracy = train_classifier(build_dataset(cfg, tmp, log=lambda m: None), steps=600, batch_size=64)
    save_classifier(model, tmp / "prior", accuracy)
    return tmp / "prior"


def test_evaluator_tells_right_from_wrong(classifier_folder, tmp_path, capsys):
    from splat3d.run.config import build_config, to_yaml
    from splat3d.shapes.evaluate import evaluate_scene, load_classifier

    classifier = load_classifier(classifier_folder)
    right = evaluate_scene(make_object("red", "house", seed=3), "red", "house", classifier)
    wrong = evaluate_scene(make_object("blue", "cube", seed=3), "red", "house", classifier)
    assert right.prompt_accuracy >= 0.75 and right.iou > 0.9 and right.colour_error < 0.05
    assert wrong.prompt_accuracy <= 0.25 and wrong.colour_error > 0.2
    # A Janus house: the same front on both sides (a copy turned half way round).
    house = make_object("red", "house", seed=3)
    raw = house.raw()
    turned = {**raw, "means": raw["means"] * torch.tensor([-1.0, -1.0, 1.0])}
    janus = GaussianScene(**{k: torch.cat([raw[k], turned[k]]) for k in raw})
    janus_eval = evaluate_scene(janus, "red", "house", classifier)
    assert right.view_consistency >= janus_eval.view_consistency + 0.25, (right.view_consistency, janus_eval)
    # Speckle: a fifth of the house's Gaussians, scattered over its surface, turned green.
    spotted = house.raw()
    dots = torch.rand(len(house), generator=torch.Generator().manual_seed(0)) < 0.2
    spotted["sh0"][dots] = rgb_to_sh0(torch.tensor(COLOURS["green"], dtype=spotted["sh0"].dtype))
    speckled = evaluate_scene(GaussianScene(**spotted), "red", "house", classifier)
    assert right.speckle < 0.02 and speckled.speckle > right.speckle + 0.05, (right.speckle, speckled.speckle)
    assert speckled.iou > 0.9  # the silhouette is the same: speckle is its own measure
    # Area ratio: the true house is the true size; grown 1.25x (rescale_scene, as size calibration does), its
    # silhouettes cover about 1.25² the area, and the IoU falls by size alone.
    from splat3d.run.size import rescale_scene

    assert abs(right.area_ratio - 1.0) < 0.03, right.area_ratio
    with torch.no_grad():
        rescale_scene(house, math.log(1.25))
    grown = evaluate_scene(house, "red", "house", classifier)
    assert 1.4 < grown.area_ratio < 1.75 and grown.iou < right.iou - 0.15, (grown.area_ratio, grown.iou)

    run = tmp_path / "run"
    run.mkdir()
    write_ply(make_object("red", "house", seed=3), run / "scene.ply")
    cfg = build_config(None, prompt__prompt="a red house", model=str(classifier_folder))
    (run / "config.yaml").write_text(to_yaml(cfg))
    code, out, err = run_cli(capsys, "eval", run, "--no-fid")
    assert code == 0, err
    assert "prompt accuracy" in out and (run / "eval.json").exists()
    cfg.prompt.prompt = "a fluffy corgi"
    (run / "config.yaml").write_text(to_yaml(cfg))
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "no truth" in " ".join(err.split())


def test_fid_and_kid_tell_distributions_apart(classifier_folder):
    """About 0 for a set against itself, small against another sampling of the same object, clearly
    larger against another object."""
    from splat3d.shapes.evaluate import distribution_distance, load_classifier, ring_cameras

    classifier = load_classifier(classifier_folder)
    cams = ring_cameras(32, 64)
    house = render(make_object("red", "house", seed=3), cams, 1.0, backend="torch").images
    again = render(make_object("red", "house", seed=4), cams, 1.0, backend="torch").images
    cube = render(make_object("blue", "cube", seed=3), cams, 1.0, backend="torch").images
    itself = distribution_distance(house, house, classifier)
    same = distribution_distance(again, house, classifier)
    other = distribution_distance(cube, house, classifier)
    for metric in ("fid", "kid"):
        assert abs(itself[metric]) < 0.02 * other[metric], (metric, itself, other)
        assert same[metric] < 0.2 * other[metric], (metric, same, other)


def test_eval_reports_fid_and_kid_against_the_prior(classifier_folder, tiny_priors, tmp_path, capsys):
    """splat3d eval samples the run's prior and writes FID and KID into eval.json."""
    import shutil

    from splat3d.run.config import build_config, to_yaml

    model = tmp_path / "model"
    shutil.copytree(tiny_priors[("latent", "epsilon")], model)
    for name in ("classifier.safetensors", "classifier.json"):
        shutil.copy(classifier_folder / name, model / name)
    run = tmp_path / "run"
    run.mkdir()
    write_ply(make_object("red", "house", seed=3), run / "scene.ply")
    (run / "config.yaml").write_text(to_yaml(build_config(None, prompt__prompt="a red house", model=str(model))))
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert result["fid"] > 0 and abs(result["kid"]) < float("inf") and "KID" in out


class _Stop(Exception):
    pass


def _stop_at(step):
    def on_step(total, loss):
        if total == step:
            raise _Stop

    return on_step


def test_latent_prior_trains_its_autoencoder_then_the_unet_and_resumes_exactly(tmp_path):
    cfg = dataclasses.replace(TINY, latent=True, vae_steps=3, vae_batch_size=4, vae_block_out_channels=(8, 16, 16),
                              steps=3, views_per_object=32, overhead_share=0.5)  # fmt: skip
    straight = PriorTrainer(cfg, tmp_path / "a", cache_dir=tmp_path / "cache", log=lambda m: None)
    straight.run()
    assert (straight.vae_step, straight.step, straight.total_step) == (3, 3, 6)
    # interrupted inside the autoencoder's stage (last checkpoint: step 2), then inside the UNet's (step 4)
    for stop in (3, 5):
        with pytest.raises(_Stop):
            PriorTrainer(cfg, tmp_path / "b", cache_dir=tmp_path / "cache", log=lambda m: None).run(_stop_at(stop))
    with pytest.raises(Splat3dError, match=r"other settings \(vae_steps\)"):  # the UNet already learns its latents
        PriorTrainer(dataclasses.replace(cfg, vae_steps=4), tmp_path / "b", cache_dir=tmp_path / "cache")
    resumed = PriorTrainer(cfg, tmp_path / "b", cache_dir=tmp_path / "cache", log=lambda m: None)
    assert resumed.total_step == 4
    folder = resumed.run()
    for a, b in ((straight.ema, resumed.ema), (straight.vae, resumed.vae)):
        for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), k
    assert (straight.data["elevation"] > 60).float().mean() == 0.5, "half the views from overhead"
    prior = load_prior(folder, device="cpu")
    assert prior.is_latent and prior.image_size == 16 and prior.unet.config.sample_size == 4
    assert prior.vae.config.scaling_factor == pytest.approx(straight.vae.config.scaling_factor)
    # latents have unit variance: samplers must not clip their x0 to the pixel range [-1, 1]
    assert prior.scheduler.config.clip_sample is False
    images = sample_images(prior, ["a red cube, overhead view"], steps=3)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_autoencoder_detail_weight_finds_the_door_and_reaches_the_loss(tmp_path):
    from splat3d.shapes.evaluate import ring_cameras

    cams = ring_cameras(size=64)  # azimuth 0 is the front
    for kind, colour in (("house", "blue"), ("house", "yellow"), ("mug", "purple"), ("cube", "red")):
        images = render(make_object(colour, kind), cams, 1.0, backend="torch").images.clamp(0, 1) * 2 - 1
        share = detail_pixels(images).mean((1, 2, 3))
        if kind == "house":  # the door (and window) on the front; the wall, the roof and the background are not details
            assert 0.02 < share[0] < 0.08, (colour, share[0])
        else:
            assert share.max() == 0, (colour, kind)
    cfg = dataclasses.replace(TINY, resolution=32, latent=True, vae_steps=2, vae_batch_size=16, steps=1,
                              vae_block_out_channels=(8, 16, 16), views_per_object=16, kinds=("house",))  # fmt: skip
    losses = {}
    for weight in (0.0, 20.0):
        trainer = PriorTrainer(dataclasses.replace(cfg, vae_detail_weight=weight), tmp_path / f"w{weight:g}",
                               cache_dir=tmp_path / "cache", log=lambda m: None)  # fmt: skip
        losses[weight] = trainer.train_vae_step()
    # the same first batch and initial weights (seeded), so only the weighting of the door's pixels differs
    assert losses[20.0] > losses[0.0] * 1.05, losses


def test_init_from_fine_tunes_every_stage_from_an_exported_priors_weights(tmp_path):
    cfg = dataclasses.replace(TINY, latent=True, vae_steps=2, vae_batch_size=4, vae_block_out_channels=(8, 16, 16),
                              steps=2, views_per_object=16, kinds=("cube", "house"))  # fmt: skip
    source = PriorTrainer(cfg, tmp_path / "a", cache_dir=tmp_path / "cache", log=lambda m: None).run()
    tuned = dataclasses.replace(cfg, vae_detail_weight=20.0, vae_steps=3, steps=3)  # a new autoencoder recipe
    start = lambda out: PriorTrainer(tuned, tmp_path / out, cache_dir=tmp_path / "cache", log=lambda m: None,  # noqa: E731
                                     init_from=source)  # fmt: skip
    trainer = start("b")
    exported = load_prior(source, device="cpu")
    # the source's weights, but no stage counted as done: all 3 + 3 steps run from them
    assert (trainer.vae_step, trainer.step, trainer.total_steps) == (0, 0, 6)
    for mine, theirs in ((trainer.vae, exported.vae), (trainer.ema["unet"], exported.unet)):
        for k, v in theirs.state_dict().items():
            assert torch.equal(v, mine.state_dict()[k]), k
    with pytest.raises(_Stop):  # interrupted in the UNet's stage: the resume needs no --init-from to keep it
        trainer.run(_stop_at(5))
    resumed = PriorTrainer(tuned, tmp_path / "b", cache_dir=tmp_path / "cache", log=lambda m: None)
    assert (resumed.vae_step, resumed.step) == (3, 1)
    folder = resumed.run()
    straight = start("c")
    straight.run()
    for (k, a), (_, b) in zip(straight.ema.state_dict().items(), resumed.ema.state_dict().items()):
        assert torch.equal(a, b), k
    assert not torch.equal(resumed.vae.state_dict()["decoder.conv_out.weight"],
                           exported.vae.state_dict()["decoder.conv_out.weight"].float())  # fmt: skip
    meta = json.loads((folder / "model_index.json").read_text())["splat3d"]
    assert meta["initialised_from"] == str(source) and meta["trained_steps"] == 3
    assert (folder / "classifier.safetensors").read_bytes() == (source / "classifier.safetensors").read_bytes()
    with pytest.raises(Splat3dError, match=r"other settings \(resolution\)"):  # another dataset: refused
        PriorTrainer(dataclasses.replace(tuned, resolution=32), tmp_path / "d", cache_dir=tmp_path / "cache",
                     init_from=source)  # fmt: skip
    with pytest.raises(Splat3dError, match="exclude each other"):
        PriorTrainer(tuned, tmp_path / "e", cache_dir=tmp_path / "cache", init_from=source, start_from=source)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists(), "refused before any work"


def test_latent_width_and_depth_reach_the_autoencoder_and_the_unet(tmp_path):
    cfg = dataclasses.replace(TINY, latent=True, vae_steps=2, vae_batch_size=4, vae_block_out_channels=(8, 16, 16),
                              vae_latent_channels=8, vae_layers_per_block=2, steps=2, views_per_object=16)  # fmt: skip
    folder = PriorTrainer(cfg, tmp_path / "a", cache_dir=tmp_path / "cache", log=lambda m: None).run()
    prior = load_prior(folder, device="cpu")
    assert prior.vae.config.latent_channels == 8 and prior.vae.config.layers_per_block == 2
    assert prior.unet.config.in_channels == prior.unet.config.out_channels == 8
    latents = prior.vae.encode(torch.zeros(1, 3, 16, 16)).latent_dist.mean
    assert latents.shape == (1, 8, 4, 4)
    images = sample_images(prior, ["a blue sphere"], steps=2)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_view_stage_balances_the_fronted_views_and_names_them(tmp_path):
    cfg = dataclasses.replace(TINY, kinds=("cube", "house"), views_per_object=64, overhead_share=0.25, view_steps=2,
                              caption_dropout=0.0, plain_caption=1.0)  # fmt: skip
    trainer = PriorTrainer(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", log=lambda m: None)
    weights = trainer._view_stage_weights()
    names = view_names(trainer.data["elevation"], trainer.data["azimuth"], PromptConfig())
    house = torch.tensor(["house" in trainer.data["objects"][i] for i in trainer.data["object"].tolist()])
    assert weights[~house].sum() == 0 and (weights[house] > 0).all()
    per_view = {v: weights[torch.tensor([n == v for n in names])].sum().item() for v in set(names)}
    assert sorted(per_view) == ["back", "front", "overhead", "side"]
    assert all(w == pytest.approx(0.25) for w in per_view.values()), per_view  # each view as likely as another
    every = dataclasses.replace(cfg, view_kinds="all")  # every kind as often as another, each kind's views too
    trainer = PriorTrainer(every, tmp_path / "all", cache_dir=tmp_path / "cache", log=lambda m: None)
    weights = trainer._view_stage_weights()
    for kind in (house, ~house):
        assert weights[kind].sum() == pytest.approx(1.0)
        for v in per_view:
            assert weights[kind & torch.tensor([n == v for n in names])].sum() == pytest.approx(0.25)
    trainer.cfg.view_fronted_weight = 3.0  # the house three times as often as the cube
    weights = trainer._view_stage_weights()
    assert weights[house].sum() == pytest.approx(3.0) and weights[~house].sum() == pytest.approx(1.0)
    trainer.cfg.view_front_weight = 2.0  # the house front twice as often as each other house view; the cube as is
    weights = trainer._view_stage_weights()
    assert weights[house].sum() == pytest.approx(3.0) and weights[~house].sum() == pytest.approx(1.0)
    is_view = lambda v: torch.tensor([n == v for n in names])  # noqa: E731
    assert weights[house & is_view("front")].sum() == pytest.approx(3.0 * 2 / 5)
    assert weights[house & is_view("back")].sum() == pytest.approx(3.0 / 5)
    assert weights[~house & is_view("front")].sum() == pytest.approx(0.25)
    everything = torch.arange(len(names))
    texts = captions(trainer.data, everything, cfg, torch.Generator().manual_seed(0), always_view=("house",))
    assert all(t.endswith(" view") == ("house" in t) for t in texts), "plain captions only for the cube"
    with pytest.raises(Splat3dError, match="a kind with a front"):  # refused at once, not at the stage's first step
        dataclasses.replace(TINY, view_steps=2)


def test_view_stage_starts_from_an_exported_prior_and_resumes_exactly(tmp_path):
    cfg = dataclasses.replace(TINY, kinds=("cube", "house"), steps=2, view_steps=3)
    source = PriorTrainer(dataclasses.replace(cfg, view_steps=0), tmp_path / "a", cache_dir=tmp_path / "cache",
                          log=lambda m: None).run()  # fmt: skip
    start = lambda out: PriorTrainer(cfg, tmp_path / out, cache_dir=tmp_path / "cache", log=lambda m: None,  # noqa: E731
                                     start_from=source)  # fmt: skip
    straight = start("b")
    exported = load_prior(source, device="cpu").unet.state_dict()
    assert straight.step == 2 and straight.total_steps == 5
    assert all(torch.equal(v, straight.ema["unet"].state_dict()[k]) for k, v in exported.items())
    folder = straight.run()
    assert straight.step == 5
    with pytest.raises(_Stop):  # checkpoint at step 4, stopped inside step 5
        start("c").run(_stop_at(5))
    resumed = start("c")
    assert resumed.step == 4
    resumed.run()
    for (k, a), (_, b) in zip(straight.ema.state_dict().items(), resumed.ema.state_dict().items()):
        assert torch.equal(a, b), k
    assert not torch.equal(straight.ema["unet"].state_dict()["conv_out.weight"], exported["conv_out.weight"])
    assert (folder / "classifier.safetensors").read_bytes() == (source / "classifier.safetensors").read_bytes()
    assert load_prior(folder, device="cpu").image_size == 16
    with pytest.raises(Splat3dError, match=r"other settings \(resolution\); start from it with the settings"):
        PriorTrainer(dataclasses.replace(cfg, resolution=32), tmp_path / "d", cache_dir=tmp_path / "cache",
                     start_from=source)  # fmt: skip
    with pytest.raises(Splat3dError, match="not a prior exported by `splat3d prior train`"):
        PriorTrainer(cfg, tmp_path / "e", cache_dir=tmp_path / "cache", start_from=tmp_path)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists(), "refused before any work"


def test_a_training_folder_resumes_only_with_its_own_settings(tmp_path):
    PriorTrainer(dataclasses.replace(TINY, steps=2), tmp_path / "run", cache_dir=tmp_path / "cache",
                 log=lambda m: None).run()  # fmt: skip
    caches = set((tmp_path / "cache").iterdir())
    with pytest.raises(Splat3dError, match=r"other settings \(latent, resolution\).*same --version"):
        PriorTrainer(dataclasses.replace(TINY, resolution=32, latent=True), tmp_path / "run",
                     cache_dir=tmp_path / "cache", log=lambda m: None)  # fmt: skip
    assert set((tmp_path / "cache").iterdir()) == caches, "refused before rendering a dataset"
    more = PriorTrainer(dataclasses.replace(TINY, steps=5), tmp_path / "run", cache_dir=tmp_path / "cache",
                        log=lambda m: None)  # fmt: skip
    assert more.step == 2  # a longer run of the same settings resumes


def test_cleanup_removes_speckle_and_haze_but_keeps_details():
    from splat3d.run.strategy import StrategyConfig, cleanup_mask
    from splat3d.shapes.world import DETAIL_RGB, object_points

    house = make_object("red", "house", seed=3)
    _, detail = object_points("house", 2500, seed=3)
    rgb, opacities = house.base_colors.detach().clone(), house.opacities.detach().clone()
    g = torch.Generator().manual_seed(0)
    dots = (torch.rand(len(house), generator=g) < 0.05) & ~detail
    rgb[dots] = torch.tensor(COLOURS["green"])  # scattered off-colour dots
    haze = (torch.rand(len(house), generator=g) < 0.05) & ~dots & ~detail
    opacities[haze] = 0.2
    mask = cleanup_mask(house.means.detach(), opacities, rgb, StrategyConfig(), chunk=1000)  # chunks: rows split
    # Dots that happen to touch another dot (two of eight neighbours) form a blotch and stay: about 6%.
    assert mask[dots].float().mean() > 0.85 and mask[haze].all()
    keep = ~dots & ~haze
    assert mask[keep].float().mean() < 0.01, "a clean surface loses almost nothing"
    assert mask[detail].float().mean() < 0.05, "the door and windows are coherent: they stay"
    assert torch.allclose(rgb[detail], torch.tensor(DETAIL_RGB, dtype=rgb.dtype))
