"""Per-iteration time and peak memory of each score-distillation method.

One run measures SDS, VSD, L-VSD and L2-VSD (linear terms exact, last_layer,
finite_difference) on the same tiny random priors, sized like the built-in
shapes prior (UNet block_out_channels (32, 64, 64), cross-attention off the
highest resolution):

- pixel-space at 32² and at 64²;
- latent, 64² renders through a tiny VAE (16² latents).

An iteration is one guidance call on a batch of renders plus the backward
pass to the images (the LoRA update included). Each method runs in a fresh
subprocess (peak memory is its own); times are medians. Writes
benchmarks/results/guidance.json and a table in docs/benchmarks.md, with
the L2-VSD / VSD ratios, plus a profile of the exact jvp.

    python benchmarks/guidance.py [--iters 20] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, reset_peak_rss, rss_kb, write_doc_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "guidance.json"
SETTINGS = {  # name: (kind, UNet sample size)
    "pixel 32²": ("pixel", 32),
    "pixel 64²": ("pixel", 64),
    "latent 64² (VAE)": ("latent", 16),
}
METHODS = [
    ("sds", {}),
    ("vsd", {}),
    ("lvsd", {}),
    ("l2vsd", {"linear_term": "exact"}),
    ("l2vsd", {"linear_term": "last_layer"}),
    ("l2vsd", {"linear_term": "finite_difference"}),
]


def label(method: str, overrides: dict) -> str:
    return f"{method} ({overrides['linear_term']})" if "linear_term" in overrides else method


def setup(folder: str, method: str, overrides: dict, batch: int):
    import torch

    from splat3d.distill.guidance import GuidanceConfig, make_guidance
    from splat3d.distill.priors import load_prior
    from splat3d.distill.prompts import PromptConfig, PromptProcessor
    from splat3d.render.cameras import orbit_cameras

    torch.manual_seed(0)
    prior = load_prior(folder, device="cpu")
    guidance = make_guidance(
        method, prior, PromptProcessor(prior, PromptConfig("a red cube")), GuidanceConfig(**overrides)
    )
    size = prior.image_size
    images = torch.rand(batch, 3, size, size).requires_grad_(True)
    cams = orbit_cameras(20.0, torch.arange(batch) * (360.0 / batch), 3.0, 40.0, size, size)
    return guidance, images, cams


def child(folder: str, method: str, overrides: dict, batch: int, iters: int, profile: bool) -> dict:
    import torch

    guidance, images, cams = setup(folder, method, overrides, batch)

    def iteration(step):
        images.grad = None
        guidance(images, cams, step).loss.backward()

    for step in range(3):
        iteration(step)
    base = reset_peak_rss()
    times = []
    for step in range(3, 3 + iters):
        t0 = time.perf_counter()
        iteration(step)
        times.append(time.perf_counter() - t0)
    result = {"seconds": statistics.median(times), "peak_extra_mb": (rss_kb("VmHWM") - base) / 1024}
    if profile:
        with torch.profiler.profile() as prof:
            for step in range(3):
                iteration(100 + step)
        result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return result


def measure(folder, method, overrides, batch, iters, profile=False) -> dict:
    payload = json.dumps([folder, method, overrides, batch, iters, profile])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", payload], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def component_times(folder: str, batch: int, reps: int = 10) -> dict:
    """UNet forward, LoRA-branch forward, the jvp and the LoRA training step, alone."""
    import torch

    from splat3d.distill.guidance.l2vsd import last_layer

    guidance, images, cams = setup(folder, "l2vsd", {}, batch)
    score = guidance.score
    inputs = guidance.prepare(images, cams, 0)
    args = (inputs.x_t, inputs.draw.t, inputs.text, inputs.camera)
    direction = {n: torch.randn_like(p) * 1e-3 for n, p in score.params.items()}

    def timed(fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    with torch.no_grad():
        plain = timed(lambda: guidance.prior.unet_output(*args[:3]))
    return {
        "unet forward (default kernels)": plain,
        "LoRA-branch forward (math SDPA)": timed(lambda: score.eps(*args)),
        "jvp: forward + tangent (exact)": timed(lambda: score.eps_and_jvp(*args, direction)),
        "jvp (last_layer)": timed(lambda: score.eps_and_jvp(*args, last_layer(direction))),
        "LoRA loss forward + backward": timed(
            lambda: score.compute_gradient(inputs.z, inputs.draw, inputs.text, inputs.camera)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="repeat every method; keep each one's fastest")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, method, overrides, batch, iters, profile = json.loads(args.child)
        print(json.dumps(child(folder, method, overrides, batch, iters, profile)))
        return

    from splat3d.distill.priors.tiny import make_tiny_prior

    rows, profiles, components = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting, (kind, sample_size) in SETTINGS.items():
            folder = str(
                make_tiny_prior(Path(tmp) / kind / str(sample_size), kind, sample_size=sample_size,
                                block_out_channels=(32, 64, 64))
            )  # fmt: skip
            # Rounds interleave the methods, so a slow spell of this shared
            # machine does not land on one method only.
            best: dict[str, dict] = {}
            for round_ in range(args.rounds):
                for method, overrides in METHODS:
                    profile = round_ == 0 and label(method, overrides) == "l2vsd (exact)" and setting == "pixel 32²"
                    r = measure(folder, method, overrides, args.batch, args.iters, profile)
                    if "profile" in r:
                        profiles[setting] = r.pop("profile")
                    name = label(method, overrides)
                    if name not in best or r["seconds"] < best[name]["seconds"]:
                        best[name] = {"setting": setting, "method": name, **r}
                    print(json.dumps({"round": round_, "setting": setting, "method": name, **r}), flush=True)
            rows.extend(best.values())
            if setting == "pixel 32²":
                components[setting] = component_times(folder, args.batch)

    vsd = {r["setting"]: r["seconds"] for r in rows if r["method"] == "vsd"}
    for r in rows:
        r["vs_vsd"] = r["seconds"] / vsd[r["setting"]]
    lines = ["| setting | method | s / iteration | vs VSD | peak extra MB |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['method']} | {r['seconds']:.4f} | {r['vs_vsd']:.2f}x | {r['peak_extra_mb']:.0f} |"
        )
    table = "\n".join(lines)
    comp = "\n".join(f"| {k} | {v * 1000:.1f} |" for k, v in components.get("pixel 32²", {}).items())
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"machine": machine(), "batch": args.batch, "rows": rows, "components_pixel32": components},
            indent=1,
        )
    )
    write_doc_section(
        "guidance",
        "## Score distillation: cost per iteration\n\n"
        f"`python benchmarks/guidance.py --iters {args.iters} --batch {args.batch} --rounds {args.rounds}` "
        f"on {machine()}. "
        "Tiny random priors sized like the shapes prior (UNet (32, 64, 64), no attention at full "
        "resolution); one iteration = guidance call + backward to the renders, LoRA update included; "
        "median of the timed iterations, each method in a fresh process, the fastest of the rounds. "
        "'vs VSD' is measured in the same run.\n\n"
        + table
        + "\n\nWhere the time goes at pixel 32² (ms per call, batch "
        f"{args.batch}):\n\n| component | ms |\n|---|---|\n{comp}\n\n"
        "Top operators of three exact L2-VSD iterations at pixel 32² (torch profiler):\n\n```\n"
        + profiles.get("pixel 32²", "")
        + "\n```",
    )


if __name__ == "__main__":
    main()
