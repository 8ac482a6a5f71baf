"""`splat3d generate` end to end on CPU with a tiny random prior."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import FAST, assert_clean, run_cli, sets, spawn_cli

from splat3d.run.checkpoint import list_checkpoints, load_checkpoint
from splat3d.run.config import build_config
from splat3d.run.trainer import RunInterrupted, resume_run, start_run
from splat3d.scene.ply import read_ply


@pytest.fixture(scope="module")
def prior_dir(tiny_priors):
    return tiny_priors[("pixel", "epsilon")]


def test_generate_writes_every_output(prior_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        capsys,
        "generate",
        "a red cube",
        "--model",
        prior_dir,
        "--steps",
        20,
        "--seed",
        3,
        "--out",
        out,
        *sets(),
    )
    assert code == 0, stderr
    assert "wrote" in stdout
    for name in ("scene.ply", "config.yaml", "metrics.jsonl", "preview.png", "views.png"):
        assert (out / name).stat().st_size > 0, name
    assert list(out.glob("turntable.*"))
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["step_000016.pt", "step_000020.pt"]  # keep 2, and the last step
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 21))
    assert all({"loss", "n_gaussians", "seconds", "peak_memory_mb"} <= set(r) for r in lines)
    counts = {r["n_gaussians"] for r in lines}
    assert len(counts) > 1, "densification must change the Gaussian count"
    scene = read_ply(out / "scene.ply")
    assert len(scene) == lines[-1]["n_gaussians"] and torch.isfinite(scene.means).all()
    state = load_checkpoint(ckpts[-1])
    for name, params in state["params"].items():
        moments = state["optimizers"][name]["state"][0]
        assert moments["exp_avg"].shape == params.shape == moments["exp_avg_sq"].shape, name
    # config.yaml repeats the run
    again = build_config(str(out / "config.yaml"))
    assert again.prompt.prompt == "a red cube" and again.steps == 20 and again.seed == 3


def open_run(prior_dir, out, steps=8, extra=()):
    """start_run of a small run: use as ``with open_run(...) as trainer:``."""
    cfg = build_config(None, [*FAST, *extra], prompt__prompt="a blue sphere", model=str(prior_dir), steps=steps)
    return start_run(cfg, out)


@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_resume_is_bit_identical(prior_dir, tmp_path, strategy):
    extra = [
        f"strategy.kind={strategy}",
        "strategy.cap_max=400",
        "strategy.refine_start=2",
        "strategy.refine_stop=6",
        "strategy.cleanup_every=1",  # cleanups after steps 6, 7 and 8, past the resume at 4
        "strategy.cleanup_opacity=0.1",
        "background=random",
        "size.calibrate_at=[0.25,1.0]",  # rescaled after steps 2 and 8: the resumed process draws the target anew
        "size.views=4",
        "size.sample_steps=3",
    ]
    with open_run(prior_dir, tmp_path / "a", extra=extra) as straight:
        straight.run()

    with open_run(prior_dir, tmp_path / "b", extra=extra) as first:

        def stop_halfway(step, logs):
            if step == 4:
                first.stop_requested = True

        with pytest.raises(RunInterrupted, match="Resume with"):
            first.run(on_step=stop_halfway)
    with resume_run(tmp_path / "b") as resumed:
        assert resumed.step == 4
        resumed.run()
    a, b = (tmp_path / "a" / "scene.ply").read_bytes(), (tmp_path / "b" / "scene.ply").read_bytes()
    assert len(read_ply(tmp_path / "a" / "scene.ply")) != 200, "the run must have densified"
    assert a == b
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_nonfinite_steps_are_skipped_and_stop_the_run(prior_dir, tmp_path, monkeypatch):
    with open_run(prior_dir, tmp_path / "nan", steps=10, extra=["max_nonfinite_steps=3"]) as trainer:
        method = type(trainer.guidance)
        original = method.__call__

        def poisoned(self, images, cams, step):  # a diverging guidance: NaN loss and gradients
            out = original(self, images, cams, step)
            out.loss = out.loss * float("nan")
            return out

        monkeypatch.setattr(method, "__call__", poisoned)
        before = {k: v.detach().clone() for k, v in trainer.scene.params.items()}
        from splat3d.run.trainer import NonFiniteRun

        with pytest.raises(NonFiniteRun, match="3 non-finite steps"):
            trainer.run()
        assert trainer.step == 3 and trainer.nonfinite_total == 3
        assert all(torch.equal(before[k], v) for k, v in trainer.scene.params.items()), "no update from NaN"
    assert list_checkpoints(tmp_path / "nan" / "checkpoints")


def _wait_for_checkpoint(folder, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list_checkpoints(folder / "checkpoints"):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_killed_run_resumes_to_completion(prior_dir, tmp_path, sig):
    out = tmp_path / "run"
    args = ["generate", "a red cube", "--model", prior_dir, "--steps", 200, "--out", out, "--quiet"]
    proc = spawn_cli([*args, *sets("output.checkpoint_every=2")], tmp_path)
    _wait_for_checkpoint(out, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "Resume with: splat3d generate --resume" in stderr and "Traceback" not in stderr
        interrupted_at = int(stderr.split("Interrupted at step ")[1].split(";")[0])
        assert list_checkpoints(out / "checkpoints")[-1].name == f"step_{interrupted_at:06d}.pt"
    else:
        assert proc.returncode == -signal.SIGKILL
    last = list_checkpoints(out / "checkpoints")[-1]
    load_checkpoint(last)  # complete, loadable
    resumed = subprocess.run(
        [sys.executable, "-m", "splat3d_cli", "generate", "--resume", str(out), "--steps", "12", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "scene.ply").exists()
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)), "metrics must have no gaps or duplicates after a resume"


def test_bad_inputs(prior_dir, tmp_path, capsys):
    gen = ["generate", "--model", prior_dir]
    out = tmp_path / "out"
    assert_clean(*run_cli(capsys, *gen, "", "--out", out)[::2], "prompt is empty")
    assert_clean(*run_cli(capsys, *gen, "a cube", "--steps", 0, "--out", out)[::2], "steps must be positive")
    assert_clean(*run_cli(capsys, *gen, "a cube", "--steps", -4, "--out", out)[::2], "steps must be positive")
    assert_clean(*run_cli(capsys, *gen, "a cube", "--set", "camera.render_size=3", "--out", out)[::2], "Render sizes")
    assert_clean(*run_cli(capsys, *gen, "a cube", "--method", "dreamfusion", "--out", out)[::2], "Unknown method")
    assert_clean(*run_cli(capsys, *gen, "a cube", "--config", "turbo", "--out", out)[::2], "Unknown preset")
    code, _, err = run_cli(capsys, *gen, "a cube", "--set", "guidance.lookahed_scale=1", "--out", out)
    assert_clean(code, err, "Unknown config key", "guidance.lookahead_scale")
    (tmp_path / "bad.yaml").write_text("steps: [unclosed\n")
    assert_clean(*run_cli(capsys, *gen, "a cube", "--config", tmp_path / "bad.yaml", "--out", out)[::2], "bad.yaml")
    assert_clean(*run_cli(capsys, "generate", "a cube", "--model", tmp_path / "nope", "--out", out)[::2], "nope")
    assert not out.exists(), "no bad input may create the run folder"
    (tmp_path / "file").write_text("x")
    assert_clean(*run_cli(capsys, *gen, "a cube", "--out", tmp_path / "file" / "run")[::2], "Cannot write")


def test_existing_runs_are_never_damaged(prior_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "scene.ply").write_bytes(b"precious")
    code, _, err = run_cli(capsys, "generate", "a cube", "--model", prior_dir, "--out", out)
    assert_clean(code, err, "not empty", "--overwrite")
    assert (out / "scene.ply").read_bytes() == b"precious"
    # corrupt and incompatible checkpoints
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "step_000004.pt").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "generate", "--resume", out)
    assert_clean(code, err, "corrupt")
    torch.save({"format": 99, "step": 4}, out / "checkpoints" / "step_000004.pt")
    code, _, err = run_cli(capsys, "generate", "--resume", out)
    assert_clean(code, err, "incompatible")
    assert (out / "scene.ply").read_bytes() == b"precious"
    code, _, err = run_cli(capsys, "generate", "--resume", tmp_path / "empty-run")
    assert_clean(code, err, "no checkpoints")


def test_config_show_and_export(prior_dir, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "config", "show", "cpu")
    assert code == 0 and "steps: 300" in out and "lookahead_scale" in out
    code, out, _ = run_cli(capsys, "config", "show", "sds")
    assert "method: sds" in out and "guidance_scale: 100.0" in out
    run = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "generate", "a red cube", "--model", prior_dir, "--steps", 4, "--out", run, "--quiet", *sets()
    )
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", run, "--format", "ply", "--sh-degree", 3, "--out", tmp_path / "e.ply")
    assert code == 0, err
    assert read_ply(tmp_path / "e.ply").sh_degree == 3
    ckpt = list_checkpoints(run / "checkpoints")[-1]
    code, _, err = run_cli(capsys, "export", ckpt, "--out", tmp_path / "c.ply")
    assert code == 0 and len(read_ply(tmp_path / "c.ply")) == len(read_ply(run / "scene.ply"))
    assert_clean(*run_cli(capsys, "export", run, "--format", "obj", "--out", tmp_path / "x")[::2], "Unknown format")


@pytest.mark.gpu
def test_gsplat_generate_smoke(prior_dir, tmp_path):
    cfg = build_config(None, FAST, prompt__prompt="a red cube", model=str(prior_dir), steps=50, device="cuda")
    with start_run(cfg, tmp_path / "gpu") as trainer:
        trainer.run()
    assert (tmp_path / "gpu" / "scene.ply").exists()


def test_render_size_schedule_and_mcmc_relocation():
    from splat3d.render.cameras import CameraConfig, CameraSampler
    from splat3d.run.strategy import compute_relocation_torch

    sampler = CameraSampler(CameraConfig(render_size=32, render_size_schedule=[[10, 48], [20, 64]], batch_size=4),
                            torch.Generator().manual_seed(0))  # fmt: skip
    assert [sampler.render_size(s) for s in (0, 9, 10, 19, 20, 99)] == [32, 32, 48, 48, 64, 64]
    cams = sampler.sample(12)
    assert len(cams) == 4 and cams.width == 48
    azimuth = torch.sort(cams.azimuth).values
    assert ((azimuth[1:] - azimuth[:-1]) > 0).all() and (azimuth.diff().max() < 180)  # stratified

    import math

    binoms = torch.tensor([[math.comb(n, k) for k in range(51)] for n in range(51)], dtype=torch.float32)
    opacities = torch.tensor([0.3, 0.9, 0.6])
    scales = torch.rand(3, 3)
    new_o, new_s = compute_relocation_torch(opacities, scales, torch.tensor([1, 2, 5]), binoms)
    torch.testing.assert_close(new_o[0], opacities[0])  # one copy: unchanged
    torch.testing.assert_close(new_s[0], scales[0])
    # n copies composite to the original opacity: 1 - (1 - o')^n = o
    torch.testing.assert_close(1 - (1 - new_o[1:]) ** torch.tensor([2.0, 5.0]), opacities[1:])
    assert (new_s[1:] < scales[1:]).all()
