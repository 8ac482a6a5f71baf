"""Size calibration (splat3d.run.size): rescaling, the factor it picks, and its place in a run."""

import math

import pytest
import torch
from helpers import FAST

from splat3d.distill.priors import load_prior
from splat3d.errors import Splat3dError
from splat3d.render import render
from splat3d.run.config import build_config
from splat3d.run.size import SizeConfig, foreground_share, prior_foreground, rescale_scene, ring, size_factor
from splat3d.run.trainer import start_run
from splat3d.shapes.world import make_object

CAMERA = build_config("cpu").camera  # the cpu preset's ranges, as the built-in prior was trained


def share(scene, size=64):
    with torch.no_grad():
        return float(foreground_share(render(scene, ring(SizeConfig(views=8), CAMERA, size), 1.0).images))


def test_rescale_scales_the_silhouettes_by_the_square():
    cube = make_object("red", "cube")
    before = share(cube)
    rescale_scene(cube, math.log(0.8))
    assert share(cube) / before == pytest.approx(0.64, abs=0.04)


def test_size_factor_recovers_a_known_scale_and_clamps():
    truth = share(make_object("green", "mug"))
    big = make_object("green", "mug")
    rescale_scene(big, math.log(1.25))
    config = SizeConfig(views=8)
    factor = size_factor(big, truth, config, CAMERA, 64)
    assert factor == pytest.approx(0.8, abs=0.03)
    assert size_factor(big, truth / 100, config, CAMERA, 64) == pytest.approx(1 / config.max_factor)
    assert size_factor(big, 1.0, config, CAMERA, 64) == pytest.approx(config.max_factor)


def test_the_builtin_prior_draws_objects_at_their_true_size():
    """The premise: the prior's samples cover the frame as the true object's renders do (within 15%)."""
    prior = load_prior("shapes", device="cpu")
    config = SizeConfig(views=8, sample_steps=20)
    for colour, kind in [("green", "mug"), ("orange", "pyramid")]:
        drawn = prior_foreground(prior, f"a {colour} {kind}", config, CAMERA, seed=0)
        assert drawn == pytest.approx(share(make_object(colour, kind)), rel=0.15), kind


def test_calibration_rescales_the_final_scene_only(tiny_priors, tmp_path):
    prior = tiny_priors[("pixel", "epsilon")]

    def run(out, extra):
        cfg = build_config(None, [*FAST, "size.views=4", "size.sample_steps=3", *extra],
                           prompt__prompt="a blue sphere", model=str(prior), steps=6)  # fmt: skip
        with start_run(cfg, out) as trainer:
            logs = [trainer.train_step() for _ in range(6)]
            return trainer.scene.raw(), logs

    plain, plain_logs = run(tmp_path / "a", [])
    calibrated, logs = run(tmp_path / "b", ["size.calibrate_at=[1.0]"])
    assert [("size_factor" in x) for x in logs] == [False] * 5 + [True]
    assert not any("size_factor" in x for x in plain_logs)
    factor = logs[-1]["size_factor"]
    assert factor != 1.0
    torch.testing.assert_close(calibrated["means"], plain["means"] * factor)
    torch.testing.assert_close(calibrated["scales"], plain["scales"] + math.log(factor))
    torch.testing.assert_close(calibrated["sh0"], plain["sh0"])


@pytest.mark.parametrize("bad", ["size.calibrate_at=[0]", "size.calibrate_at=[1.5]", "size.views=0"])
def test_bad_settings_are_one_sentence(bad):
    with pytest.raises(Splat3dError, match="size"):
        build_config(None, [bad], prompt__prompt="a cube")


def test_default_is_off():
    assert build_config(None, [], prompt__prompt="a cube", device="cuda").size.calibrate_at == []
