"""Can torch.compile cut the exact linear term's cost on CPU? The LoRA branch's call alone, on real inputs.

Runs the cpu preset's L2-VSD (exact term) on one prompt for a few steps, keeps the inputs of the last
linear-term call, then times on them, median of --reps calls each: eps_phi alone; eps_phi and its jvp with
forward-mode dual tensors (what splat3d runs); the finite difference (two forwards); the same jvp through
torch.func.jvp, eager and under torch.compile (whose compile time is reported apart). The compiled result is
checked against the eager one. Writes benchmarks/results/jvp_compile.json.

    python benchmarks/jvp_compile.py [--model shapes] [--reps 10]
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
from common import ROOT, machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "jvp_compile.json"


def median_seconds(fn, reps: int) -> float:
    fn()  # first call: allocations and caches
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import torch

    from splat3d.distill.guidance.lora import forward_ad_kernels
    from splat3d.run.config import build_config
    from splat3d.run.trainer import start_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--prompt", default="a red house")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    cfg = build_config("cpu", ["steps=10", "guidance.linear_term=exact"], prompt__prompt=args.prompt,
                       model=args.model, method="l2vsd")  # fmt: skip
    captured: dict = {}
    with tempfile.TemporaryDirectory() as tmp, start_run(cfg, Path(tmp) / "run") as trainer:
        score = trainer.guidance.score
        eps_and_jvp = score.eps_and_jvp

        def keep_inputs(*call_args):
            captured["args"] = [a.detach().clone() for a in call_args[:4]]
            captured["direction"] = {k: v.detach().clone() for k, v in call_args[4].items()}
            return eps_and_jvp(*call_args)

        score.eps_and_jvp = keep_inputs
        for _ in range(6):
            trainer.train_step()
        score.eps_and_jvp = eps_and_jvp
        x_t, t, text, camera = captured["args"]
        direction = captured["direction"]
        primals = {n: score.params[n].detach() for n in direction}

        def jvp(tangents):
            return torch.func.jvp(lambda p: score._call(x_t, t, text, camera, p), (primals,), (tangents,))

        compiled_jvp = torch.compile(jvp)

        def in_branch(fn):
            def call():
                with score.lora_branch(), forward_ad_kernels():
                    return fn(direction)

            return call

        variants = {
            "eps_phi alone": lambda: score.eps(x_t, t, text, camera),
            "exact, dual tensors (splat3d)": lambda: score.eps_and_jvp(x_t, t, text, camera, direction),
            "finite difference": lambda: score.eps_and_finite_difference(x_t, t, text, camera, direction, 1.0),
            "exact, torch.func.jvp eager": in_branch(jvp),
        }
        seconds = {}
        for name, fn in variants.items():
            seconds[name] = median_seconds(fn, args.reps)
            print(f"{name}: {seconds[name]:.4f} s", flush=True)
        reference = variants["exact, dual tensors (splat3d)"]()
        compiled: dict = {}
        t0 = time.perf_counter()
        try:
            out = in_branch(compiled_jvp)()
            compiled["compile_seconds"] = time.perf_counter() - t0
            compiled["relative_error"] = [((o - r).norm() / r.norm()).item() for o, r in zip(out, reference)]
            seconds["exact, torch.func.jvp compiled"] = median_seconds(in_branch(compiled_jvp), args.reps)
        except Exception as error:  # noqa: BLE001 -- the failure is the result to report
            compiled["failed_after_seconds"] = time.perf_counter() - t0
            lines = str(error).splitlines()
            cause = next((line.strip() for line in lines if "got RuntimeError" in line), "")
            compiled["error"] = f"{type(error).__name__}: {lines[0]} {cause}"[:800]
            print(f"torch.compile failed: {compiled['error']}")
    table = ["| linear-term call | s | ratio to eps_phi alone |", "|---|---|---|"]
    table += [f"| {name} | {s:.4f} | {s / seconds['eps_phi alone']:.2f} |" for name, s in seconds.items()]
    print("\n".join(table))
    result = {"machine": machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "model": args.model, "prompt": args.prompt, "reps": args.reps, "seconds": seconds,
              "compiled": compiled}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
