"""What L2-VSD's linear term costs in a whole generate step, as a ratio to VSD in the same run.

Every variant runs the cpu preset's first --steps steps of one prompt with the same prior and seed
(rendering, guidance with its LoRA step, Adam, densification: the whole process), in rounds that
alternate the variants so a busy machine slows them alike; each variant keeps its fastest round's
median seconds per step. Then a torch.profiler table of a few L2-VSD (exact) steps: where the time goes.
Writes benchmarks/results/step_cost.json and a section of docs/benchmarks.md.

    python benchmarks/step_cost.py [--model shapes] [--steps 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_doc_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "step_cost.json"
VARIANTS = {
    "vsd": ("vsd", []),
    "l2vsd (exact)": ("l2vsd", ["guidance.linear_term=exact"]),
    "l2vsd (finite_difference)": ("l2vsd", ["guidance.linear_term=finite_difference"]),
    "l2vsd (last_layer)": ("l2vsd", ["guidance.linear_term=last_layer"]),
}
WARMUP = 5  # steps left out of the median: first calls allocate and fill caches


def seconds_per_step(model: str, prompt: str, method: str, overrides: list[str], steps: int) -> float:
    from splat3d.run.config import build_config
    from splat3d.run.trainer import start_run

    cfg = build_config("cpu", [*overrides, f"steps={steps}", f"output.checkpoint_every={steps}",
                               f"output.preview_every={steps}"],
                       prompt__prompt=prompt, model=model, method=method)  # fmt: skip
    times = []
    with tempfile.TemporaryDirectory() as tmp, start_run(cfg, Path(tmp) / "run") as trainer:
        while trainer.step < steps:
            t0 = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - t0)
    return statistics.median(times[WARMUP:])


def profile(model: str, prompt: str, steps: int = 8) -> str:
    import torch

    from splat3d.run.config import build_config
    from splat3d.run.trainer import start_run

    overrides = [f"steps={steps + WARMUP}", "guidance.linear_term=exact"]  # whatever the cpu preset picks
    cfg = build_config("cpu", overrides, prompt__prompt=prompt, model=model, method="l2vsd")
    with tempfile.TemporaryDirectory() as tmp, start_run(cfg, Path(tmp) / "run") as trainer:
        for _ in range(WARMUP):
            trainer.train_step()
        with torch.profiler.profile() as prof:
            for _ in range(steps):
                trainer.train_step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--prompt", default="a red house")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.steps <= WARMUP + 2:
        raise SystemExit(f"--steps must be more than {WARMUP + 2}")
    best: dict[str, float] = {}
    for round_ in range(args.rounds):
        for name, (method, overrides) in VARIANTS.items():
            s = seconds_per_step(args.model, args.prompt, method, overrides, args.steps)
            best[name] = min(best.get(name, float("inf")), s)
            print(f"round {round_ + 1}: {name} {s:.3f} s/step", flush=True)
    table = ["| variant | s/step | ratio to vsd |", "|---|---|---|"]
    table += [f"| {name} | {s:.3f} | {s / best['vsd']:.2f} |" for name, s in best.items()]
    prof = profile(args.model, args.prompt)
    print("\n".join(table))
    print(prof)
    result = {"machine": machine(), "threads": torch.get_num_threads(), "model": args.model, "prompt": args.prompt,
              "steps": args.steps, "rounds": args.rounds, "seconds_per_step": best,
              "ratio_to_vsd": {k: v / best["vsd"] for k, v in best.items()}, "profile": prof}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    write_doc_section(
        "step_cost",
        "## The cost of L2-VSD's linear term in a whole step\n\n"
        f"`python benchmarks/step_cost.py --model {args.model} --steps {args.steps} --rounds {args.rounds}` on "
        f"{machine()} ({torch.get_num_threads()} threads): the cpu preset's first {args.steps} steps of "
        f'"{args.prompt}", whole generate steps (render, guidance with the LoRA step, Adam, densification); '
        "each variant's fastest round, median over the steps after the first five.\n\n"
        + "\n".join(table)
        + "\n\nWhere an L2-VSD (exact) step spends its time (torch.profiler, 8 steps, by self CPU time):\n\n```\n"
        + prof
        + "\n```\n",
    )


if __name__ == "__main__":
    main()
