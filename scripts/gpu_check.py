"""The measurements of scripts/gpu_check.sh (needs CUDA): rasterizer parity and timings, a 200-step generate."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
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
        "n": n, "size": size, "sh_degree": sh_degree,
        "max_abs_image_diff": (out_g.images - out_t.images).abs().max().item(),
        "max_abs_alpha_diff": (out_g.alphas - out_t.alphas).abs().max().item(),
        "min_grad_cosine": min(cos.values()),
        "gsplat_fwd_bwd_s": timed(fwd_bwd(scene, "gsplat")),
        "torch_fwd_bwd_s": timed(fwd_bwd(other, "torch")),
    }  # fmt: skip


def generate_200(out: Path) -> dict:
    from splat3d.distill.priors.tiny import make_tiny_prior
    from splat3d.run.config import build_config
    from splat3d.run.trainer import start_run

    with tempfile.TemporaryDirectory() as tmp:
        prior = make_tiny_prior(Path(tmp) / "prior", "latent", sample_size=16)
        cfg = build_config(None, ["camera.render_size=64", "init.count=2000"], prompt__prompt="a red cube",
                           model=str(prior), steps=200, device="cuda")  # fmt: skip
        with start_run(cfg, out / "generate_run", overwrite=True) as trainer:
            t0 = time.perf_counter()
            trainer.run()
            seconds = time.perf_counter() - t0
    return {"steps": 200, "seconds": seconds, "seconds_per_step": seconds / 200,
            "gaussians": len(trainer.scene), "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [parity(n, size, d) for n, size, d in [(1000, 64, 0), (10000, 128, 3), (50000, 256, 3)]]
    print(
        "| N | size | SH | max |img diff| | max |alpha diff| | min grad cosine | gsplat fwd+bwd s | torch fwd+bwd s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['size']}² | {r['sh_degree']} | {r['max_abs_image_diff']:.2e} "
              f"| {r['max_abs_alpha_diff']:.2e} | {r['min_grad_cosine']:.5f} | {r['gsplat_fwd_bwd_s']:.4f} "
              f"| {r['torch_fwd_bwd_s']:.4f} |")  # fmt: skip
    gen = generate_200(args.out)
    print(
        f"generate 200 steps (tiny latent prior, 64 px, CUDA): {gen['seconds']:.1f} s, "
        f"{gen['seconds_per_step']:.3f} s/step, {gen['gaussians']:,} Gaussians, peak {gen['peak_cuda_mb']:.0f} MB"
    )
    (args.out / "gpu_check.json").write_text(json.dumps({"parity": rows, "generate": gen}, indent=1))
    ok = all(r["max_abs_image_diff"] < 5e-3 and r["min_grad_cosine"] > 0.99 for r in rows)
    print("parity:", "OK" if ok else "MISMATCH")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
