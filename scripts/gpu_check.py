"""The measurements of scripts/gpu_check.sh (needs CUDA).

- generate_sd: a gpu-preset L2-VSD run with the Stable-Diffusion-2.1-base-shaped
  random prior at 512-px renders, shortened; seconds per step, peak memory and
  the projected minutes per asset at the preset's step count;
- parity: gsplat's CUDA rasterizer against splat3d's torch backend (forward
  and gradients), and both timed;
- generate_tiny: 200 steps with a tiny random prior.

Run folders go to a temporary folder; results to OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from splat3d.render import render
from splat3d.render.cameras import orbit_cameras
from splat3d.scene import PARAM_NAMES, GaussianScene


def timed(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def parity(n: int, size: int, sh_degree: int) -> dict:
    g = torch.Generator().manual_seed(n + size)
    scene = GaussianScene.random_ball(n, 1.0, 0.5, None, sh_degree, generator=g)
    scene.params["shN"].data.normal_(0, 0.1, generator=g)
    # Anisotropic and rotated: a ball of round Gaussians has no rotation gradient to compare.
    scene.params["scales"].data.add_(torch.randn(scene.params["scales"].shape, generator=g) * 0.5)
    scene.params["quats"].data.normal_(0, 1, generator=g)
    scene = scene.to("cuda")
    other = scene.clone()
    cams = orbit_cameras(torch.tensor([15.0, 40.0]), torch.tensor([0.0, 200.0]), 3.0, 45.0, size, size).to("cuda")
    out_g = render(scene, cams, 0.5, backend="gsplat")
    out_t = render(other, cams, 0.5, backend="torch")
    weights = torch.randn_like(out_g.images)
    (out_g.images * weights).sum().backward()
    (out_t.images * weights).sum().backward()
    cos = {
        k: torch.nn.functional.cosine_similarity(
            scene.params[k].grad.flatten(), other.params[k].grad.flatten(), dim=0
        ).item()
        for k in PARAM_NAMES
        if not (k == "shN" and sh_degree == 0)
    }

    def fwd_bwd(s, backend):
        def run():
            out = render(s, cams, 0.5, backend=backend)
            out.images.sum().backward()

        return run

    return {
        "n": n,
        "size": size,
        "sh_degree": sh_degree,
        "max_abs_image_diff": (out_g.images - out_t.images).abs().max().item(),
        "max_abs_alpha_diff": (out_g.alphas - out_t.alphas).abs().max().item(),
        "min_grad_cosine": min(cos.values()),
        "gsplat_fwd_bwd_s": timed(fwd_bwd(scene, "gsplat")),
        "torch_fwd_bwd_s": timed(fwd_bwd(other, "torch")),
    }


def _run_stats(run: Path, skip: int) -> dict:
    """Seconds per step after ``skip`` warm-up steps, peak memory and Gaussians, from a run's metrics.jsonl."""
    from splat3d.run.folder import RunFolder

    records = [json.loads(line) for line in RunFolder(run).metrics_path.read_text().splitlines()]
    first, last = records[min(skip, len(records) - 1) - 1] if skip else {"step": 0, "seconds": 0.0}, records[-1]
    return {
        "steps": last["step"],
        "seconds_per_step": (last["seconds"] - first["seconds"]) / (last["step"] - first["step"]),
        "train_seconds": last["seconds"],
        "gaussians": last["n_gaussians"],
        "peak_memory_mb": max(r["peak_memory_mb"] for r in records),
        "finite_steps": sum(all(math.isfinite(v) for v in r.values() if isinstance(v, float)) for r in records),
    }


def generate_200() -> dict:
    """200 steps with a tiny random latent prior at 64 px."""
    from splat3d.distill.priors.tiny import make_tiny_prior
    from splat3d.run.config import build_config
    from splat3d.run.trainer import start_run

    with tempfile.TemporaryDirectory() as tmp:
        prior = make_tiny_prior(Path(tmp) / "prior", "latent", sample_size=16)
        cfg = build_config(
            None,
            ["camera.render_size=64", "init.count=2000"],
            prompt__prompt="a red cube",
            model=str(prior),
            steps=200,
            device="cuda",
        )
        t0 = time.perf_counter()
        with start_run(cfg, Path(tmp) / "run", overwrite=True) as trainer:
            trainer.run()
        return {"wall_seconds": time.perf_counter() - t0, **_run_stats(Path(tmp) / "run", skip=10)}


# The gpu preset at its most expensive phase (512-px renders), shortened: the
# schedule's steps are scaled into the short run so densification and the
# anneal happen too.
def gpu_preset_overrides(steps: int) -> list[str]:
    return [
        "camera.render_size=512",
        "camera.render_size_schedule=[]",
        f"strategy.refine_start={steps // 5}",
        f"strategy.refine_every={max(1, steps // 10)}",
        f"strategy.refine_stop={steps * 3 // 4}",
        f"guidance.anneal_start_step={steps // 5}",
        f"output.checkpoint_every={steps}",
        f"output.preview_every={steps}",
        "output.video_frames=12",
    ]


def generate_sd(steps: int, backend: str, device: str = "cuda", reduced: bool = False) -> dict:
    """A gpu-preset L2-VSD run with the SD-2.1-base-shaped random prior (its cost is the real model's).

    ``device="cpu", reduced=True`` is the quick CPU rehearsal of this check.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from sd_shaped import save_sd_shaped_prior

    from splat3d.run.config import build_config
    from splat3d.run.trainer import start_run

    cuda = device == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prior = save_sd_shaped_prior(Path(tmp) / "sd21-shaped", device, torch.float16 if cuda else None, reduced)
        saved = time.perf_counter() - t0
        overrides = gpu_preset_overrides(steps)
        cfg = build_config("gpu", overrides, prompt__prompt="a corgi", model=str(prior), steps=steps, device=device,
                           backend=backend)  # fmt: skip
        preset_steps = build_config("gpu", prompt__prompt="a corgi").steps  # what the gpu preset runs
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with start_run(cfg, Path(tmp) / "run", overwrite=True) as trainer:
            load = time.perf_counter() - t0
            print(f"generate_sd: prior saved in {saved:.0f} s, run loaded in {load:.0f} s", flush=True)

            def progress(step, logs):  # where the time goes, even if the check is cut short
                if step % 10 == 0:
                    print(f"generate_sd: step {step}, {time.perf_counter() - t0:.0f} s, "
                          f"{logs['n_gaussians']:,} Gaussians", flush=True)  # fmt: skip

            trainer.run(progress)
        stats = _run_stats(Path(tmp) / "run", skip=10)
    stats.update(wall_seconds=time.perf_counter() - t0, prior_save_seconds=saved, load_seconds=load,
                 backend=backend, overrides=overrides, gpu_preset_steps=preset_steps,
                 projected_minutes=stats["seconds_per_step"] * preset_steps / 60)  # fmt: skip
    return stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    parser.add_argument("--parts", default="sd,parity,tiny", help="comma-separated: sd, parity, tiny")
    parser.add_argument("--sd-steps", type=int, default=100)
    parser.add_argument("--backend", default="gsplat", choices=["gsplat", "torch"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"gpu": torch.cuda.get_device_name()}
    failed = []

    def part(name, fn):
        try:
            results[name] = fn()
        except Exception as e:  # noqa: BLE001 - one part failing must not lose the others
            results[name] = {"error": f"{type(e).__name__}: {str(e).strip()[-600:]}"}
            failed.append(name)
            traceback.print_exc()
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
        print(f"{name}: {json.dumps(results[name])}", flush=True)

    parts = args.parts.split(",")
    if "sd" in parts:
        part("generate_sd", lambda: generate_sd(args.sd_steps, args.backend))
    if "parity" in parts:
        part("parity", lambda: [parity(n, size, d) for n, size, d in [(1000, 64, 0), (10000, 128, 3)]])
    if "tiny" in parts:
        part("generate_tiny", generate_200)

    print(f"\nGPU: {results['gpu']}")

    def summary(label: str, r: dict) -> str:
        return (f"{label}: {r['seconds_per_step']:.3f} s/step over {r['steps']} steps, "
                f"{r['wall_seconds']:.0f} s in all, peak {r['peak_memory_mb'] / 1024:.1f} GB, "
                f"{r['gaussians']:,} Gaussians")  # fmt: skip

    gen = results.get("generate_sd", {})
    if "seconds_per_step" in gen:
        print(summary(f"gpu-preset L2-VSD, SD-2.1-base-shaped prior, 512 px, {gen['backend']}", gen)
              + f"; projected {gen['projected_minutes']:.1f} min at {gen['gpu_preset_steps']} steps")  # fmt: skip
    rows = results.get("parity") if isinstance(results.get("parity"), list) else []
    if rows:
        print(
            "| N | size | SH | max |img diff| | max |alpha diff| | min grad cosine | gsplat fwd+bwd s "
            "| torch fwd+bwd s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['n']:,} | {r['size']}² | {r['sh_degree']} | {r['max_abs_image_diff']:.2e} "
                f"| {r['max_abs_alpha_diff']:.2e} | {r['min_grad_cosine']:.5f} | {r['gsplat_fwd_bwd_s']:.4f} "
                f"| {r['torch_fwd_bwd_s']:.4f} |"
            )
        ok = all(r["max_abs_image_diff"] < 5e-3 and r["min_grad_cosine"] > 0.99 for r in rows)
        print("parity:", "OK" if ok else "MISMATCH")
        if not ok:
            failed.append("parity (mismatch)")
    tiny = results.get("generate_tiny", {})
    if "seconds_per_step" in tiny:
        print(summary("generate 200 steps (tiny latent prior, 64 px)", tiny))
    print("failed:", ", ".join(failed) if failed else "none")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
