"""The shapes world, prior training (tiny) and 2D sampling."""

import dataclasses

import imageio.v3 as iio
import pytest
import torch
from test_generate import run_cli

from splat3d.cameras import orbit_cameras
from splat3d.priors import load_prior
from splat3d.render import render
from splat3d.sample import sample_images
from splat3d.shapes.train_prior import PriorTrainConfig, PriorTrainer
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


def test_parse_prompt_warns_outside_the_vocabulary():
    with pytest.warns(UserWarning, match="does not know 'fluffy', 'corgi'; it knows the colours red"):
        assert parse_prompt("a fluffy corgi") is None
    spec = parse_prompt("a blue torus, side view")
    assert (spec.colour, spec.kind) == ("blue", "torus")


TINY = PriorTrainConfig(
    steps=4, batch_size=8, resolution=16, views_per_object=16, colours=("red", "blue"), kinds=("cube", "sphere"),
    block_out_channels=(16, 32), cross_attention_dim=32, checkpoint_every=2, ema_decay=0.9,
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
    images = sample_images(prior, ["a red cube", "a blue sphere, side view"], steps=3)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_prior_sample_cli(tiny_priors, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, "prior", "sample", "a red cube", "--model", tiny_priors[("latent", "v_prediction")],
                           "--n", 3, "--steps", 4, "--out", out)  # fmt: skip
    assert code == 0, err
    assert iio.imread(out).shape[2] == 3
    code, _, err = run_cli(capsys, "prior", "sample", " ", "--out", out)
    assert code == 2 and "empty" in err
