"""generate's output pinned: a refactor must not change what a seed makes.

The reference is scene.ply's properties after short CPU runs with the tiny random priors (built from a
seed, see splat3d/distill/priors/tiny.py), stored in tests/pinned/*.npz. They were first pinned as
sha256 digests before the layout change of issue 16 (commit d54b04b). On 2026-11-29 a new machine of
the same kind (torch 2.13.0+cpu, AVX512) made different bytes from the same code: the digests held
the machine, not only the code. Bits also move with the thread count: 1 thread against 2 differs by
up to 1.1e-4 in the opacity logits and 6e-5 elsewhere after 8 steps. So the test compares values with a
tolerance of 2e-3, about 20 times that rounding spread and far below what a change in the method does
(one step's update is of order 1e-2). The arrays were re-recorded at 353827e (code unchanged since the
digests). To re-record at a commit known to be right: SPLAT3D_RECORD_PINNED=1 python -m pytest
tests/test_pinned_outputs.py, and say so in the commit.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import SMALL, run_cli, sets
from plyfile import PlyData

PINNED = Path(__file__).parent / "pinned"
CASES = [("pixel", "sds"), ("pixel", "vsd"), ("pixel", "lvsd"), ("pixel", "l2vsd"),
         # The encoder path, unchanged since d54b04b; the decoded default was pinned when it came in (issue 17).
         ("latent", "l2vsd-encoder"), ("latent", "l2vsd"), ("pixel", "l2vsd-resumed")]  # fmt: skip
TOLERANCE = 2e-3


def properties(path) -> dict[str, np.ndarray]:
    vertex = PlyData.read(str(path))["vertex"].data
    return {name: np.asarray(vertex[name]) for name in vertex.dtype.names}


@pytest.mark.parametrize("kind, method", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_scene_ply_is_pinned(tiny_priors, tmp_path, capsys, kind, method):
    prior = tiny_priors[(kind, "epsilon")]
    out = tmp_path / "run"
    steps = 4 if method.endswith("-resumed") else 8
    args = ["generate", "a red cube", "--model", prior, "--method", method.split("-")[0], "--seed", 1,
            "--out", out, "--quiet", *sets(*SMALL)]  # fmt: skip
    # Held at the values the reference was recorded with, so that tuning the cpu preset does not move them.
    scale = "100" if method.startswith("sds") else "7.5"
    args += ["--set", f"guidance.guidance_scale={scale}", "--set", "guidance.decoded_pull=1.0",
             "--set", "guidance.linear_term=exact", "--set", "size.calibrate_at=[]"]  # fmt: skip
    if method.endswith("-encoder"):
        args += ["--set", "guidance.latent_gradient=encoder"]
    code, _, err = run_cli(capsys, *args, "--steps", steps)
    assert code == 0, err
    if method.endswith("-resumed"):
        code, _, err = run_cli(capsys, "generate", "--resume", out, "--steps", 8, "--quiet")
        assert code == 0, err
    got = properties(out / "scene.ply")
    reference = PINNED / f"{kind}-{method}.npz"
    if os.environ.get("SPLAT3D_RECORD_PINNED") == "1":
        PINNED.mkdir(exist_ok=True)
        np.savez_compressed(reference, **got)
    with np.load(reference) as stored:
        want = dict(stored)
    assert list(got) == list(want), "scene.ply's properties changed"
    assert len(got["x"]) == len(want["x"]), f"{len(got['x'])} Gaussians, pinned {len(want['x'])}"
    for name, values in want.items():
        worst = float(np.abs(got[name] - values).max())
        assert worst <= TOLERANCE, f"{name} moved by {worst:.2e} from the pinned run (tolerance {TOLERANCE})"
