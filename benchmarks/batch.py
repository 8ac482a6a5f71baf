"""`splat3d batch` speed-up: 8 prompts in sequence vs one Ray task each on 2 workers, same run.

Both legs run the real command line (``splat3d batch ... --quiet``) in a
fresh process on the same 8 prompts of the shapes world (benchmarks/prompts.txt),
with the built-in shapes prior and the cpu preset at --steps steps, into
fresh folders. The sequential leg gives each run all the cores as torch
threads; the Ray leg starts a local Ray instance with 2 workers of 1 CPU
each (Ray's start-up is inside its time). Prints a table, writes
benchmarks/results/batch.json and a section of docs/benchmarks.md.

    python benchmarks/batch.py [--steps 100] [--prompts 8]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_doc_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "batch.json"


def leg(name: str, prompts: Path, out: Path, steps: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "splat3d_cli.main", "batch", str(prompts), "--out", str(out), "--model", "shapes",
           "--steps", str(steps), "--quiet", *extra]  # fmt: skip
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    return {
        "name": name, "command": " ".join(["splat3d", *cmd[3:]]), "wall_seconds": seconds,
        "run_seconds": [float(r["seconds"]) for r in rows], "done": sum(r["status"] == "done" for r in rows),
        "prompt_accuracy": [float(r["prompt_accuracy"]) for r in rows if r["prompt_accuracy"]],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    lines = [x for x in (ROOT / "benchmarks" / "prompts.txt").read_text().splitlines() if x and not x.startswith("#")]
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(lines[: args.prompts]) + "\n")
        sequential = leg("sequential", prompts, Path(tmp) / "seq", args.steps, [])
        ray = leg("ray, 2 workers", prompts, Path(tmp) / "ray", args.steps, ["--ray", "--workers", "2"])
    speedup = sequential["wall_seconds"] / ray["wall_seconds"]
    result = {"machine": machine(), "steps": args.steps, "prompts": args.prompts, "legs": [sequential, ray],
              "speedup": speedup}  # fmt: skip
    print(f"{'leg':<16} {'wall s':>8} {'mean run s':>11} {'done':>5}")
    for x in (sequential, ray):
        mean = sum(x["run_seconds"]) / len(x["run_seconds"])
        print(f"{x['name']:<16} {x['wall_seconds']:>8.1f} {mean:>11.1f} {x['done']:>5}")
    print(f"speed-up (sequential / ray): {speedup:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if args.out == RESULTS:
        rows = "\n".join(
            f"| {x['name']} | {x['wall_seconds']:.1f} | {sum(x['run_seconds']) / len(x['run_seconds']):.1f} | "
            f"{x['done']}/{args.prompts} |"
            for x in (sequential, ray)
        )
        write_doc_section(
            "batch",
            "## batch: sequential vs Ray\n\n"
            f"`python benchmarks/batch.py --steps {args.steps}` on {machine()}: {args.prompts} prompts of "
            f"benchmarks/prompts.txt, shapes prior, cpu preset, {args.steps} steps each; the real command line, "
            "measured in the same run. Sequential runs get all cores as torch threads; the Ray leg is one task "
            "per prompt on a local Ray instance with 2 workers of 1 CPU (Ray's start-up included).\n\n"
            "| leg | wall-clock s | mean s per run | done |\n|---|---|---|---|\n"
            f"{rows}\n\n**Speed-up: {speedup:.2f}x** (sequential / Ray).\n",
        )


if __name__ == "__main__":
    main()
