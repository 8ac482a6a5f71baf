"""Helpers the test modules share (imported as ``from helpers import ...``; tests/ is on the path)."""

import os
import subprocess
import sys

import torch
from splat3d_cli.main import main as cli_main

from splat3d.scene import GaussianScene

# Small and quick: 32 px renders of a 16 px prior, densification every 4 steps.
FAST = [
    "init.count=200",
    "camera.render_size=32",
    "strategy.refine_start=4",
    "strategy.refine_every=4",
    "strategy.grow_grad2d=1e-7",
    "guidance.anneal_start_step=6",
    "output.checkpoint_every=4",
    "output.keep_checkpoints=2",
    "output.preview_every=5",
    "output.preview_views=2",
    "output.preview_size=32",
    "output.final_views=4",
    "output.video_frames=6",
    "output.video_size=32",
]
# With FAST: no densification past step 8, so the scene stays small and steps and checkpoints stay cheap.
SMALL = ["strategy.refine_stop=8"]


def run_cli(capsys, *args):
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["splat3d", *map(str, args)]
    try:
        cli_main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def sets(*extra):
    return [x for item in (*FAST, *extra) for x in ("--set", item)]


def spawn_cli(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "splat3d_cli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
    )  # fmt: skip


def assert_clean(code, stderr, *fragments):
    assert code == 2, stderr
    assert "Traceback" not in stderr
    text = " ".join(stderr.split())
    for f in fragments:
        assert f in text, text


def random_scene(n=40, sh_degree=0, seed=0, dtype=torch.float64, spread=1.0) -> GaussianScene:
    """Gaussians of varied size, shape, rotation, opacity and colour."""
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2 - 1
    return GaussianScene(
        means=(torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1) * spread,
        scales=torch.rand(n, 3, generator=g, dtype=dtype) * 1.5 - 3.2,
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        opacities=torch.randn(n, generator=g, dtype=dtype) * 1.5,
        sh0=torch.randn(n, 1, 3, generator=g, dtype=dtype) * 0.8,
        shN=torch.randn(n, k, 3, generator=g, dtype=dtype) * 0.3,
    )
