"""Seconds per step and peak memory of `generate` for each method on CPU.

Runs the CPU preset (32 px renders, 1000 Gaussians, densification every 50
steps) with a tiny random prior sized like the shapes prior (pixel space,
32², UNet (32, 64, 64)) for --steps steps per method, each in a fresh
process. Writes benchmarks/results/generate.json and a table in
docs/benchmarks.md.

    python benchmarks/generate.py [--steps 120]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_doc_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "generate.json"
METHODS = ["sds", "vsd", "lvsd", "l2vsd"]


def child(prior: str, method: str, steps: int, out: str) -> dict:
    from splat3d.run.config import build_config
    from splat3d.run.trainer import start_run

    overrides = ["output.checkpoint_every=1000000", "output.preview_every=1000000", "output.video_frames=2",
                 "output.final_views=2", "output.video_size=32"]  # fmt: skip
    cfg = build_config("cpu", overrides, prompt__prompt="a red cube", model=prior, method=method, steps=steps)
    with start_run(cfg, Path(out)) as trainer:
        trainer.run()
    rows = [json.loads(x) for x in trainer.folder.metrics_path.read_text().splitlines()]
    per_step = [b["seconds"] - a["seconds"] for a, b in zip(rows, rows[1:])]
    return {
        "method": method,
        "seconds_per_step": statistics.median(per_step[5:] or per_step),
        "total_seconds": rows[-1]["seconds"],
        "peak_memory_mb": rows[-1]["peak_memory_mb"],
        "final_gaussians": rows[-1]["n_gaussians"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return

    from splat3d.distill.priors.tiny import make_tiny_prior

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prior = str(make_tiny_prior(Path(tmp) / "prior", "pixel", sample_size=32, block_out_channels=(32, 64, 64)))
        for method in METHODS:
            payload = json.dumps([prior, method, args.steps, str(Path(tmp) / method)])
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.run(
                [sys.executable, __file__, "--child", payload], capture_output=True, text=True, env=env
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    vsd = next(r["seconds_per_step"] for r in rows if r["method"] == "vsd")
    lines = ["| method | s / step | vs VSD | total s | peak RSS MB | final Gaussians |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seconds_per_step']:.3f} | {r['seconds_per_step'] / vsd:.2f}x "
            f"| {r['total_seconds']:.1f} | {r['peak_memory_mb']:.0f} | {r['final_gaussians']:,} |"
        )
    table = "\n".join(lines)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "steps": args.steps, "rows": rows}, indent=1))
    write_doc_section(
        "generate",
        "## generate: seconds per step on CPU\n\n"
        f"`python benchmarks/generate.py --steps {args.steps}` on {machine()}: the `cpu` preset "
        "(32 px renders, 1,000 initial Gaussians, densify every 50 steps from step 50) with a tiny random "
        "pixel-space prior at 32² sized like the shapes prior; median seconds per step after 5 warm-up "
        "steps, each method in a fresh process. Peak RSS is the whole process (Python, torch, prior).\n\n" + table,
    )


if __name__ == "__main__":
    main()
