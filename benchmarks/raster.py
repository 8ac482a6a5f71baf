"""Speed and memory of the CPU (torch) rasterizer against a dense brute force.

For N in {1k, 10k, 50k} Gaussians (a random ball, as `generate` starts from)
at 64², 128² and 256², measures forward and forward+backward time and the
peak extra memory of:

- torch: splat3d's pair-list rasterizer (splat3d.render.raster_torch);
- dense: the same projection, but every Gaussian composited at every pixel
  ([pixels, N] tensors), i.e. what a naive PyTorch rasterizer does.

Each measurement runs in a fresh subprocess so peak RSS is its own. Dense
runs that would need more than --dense-limit-gb are skipped and marked so.
Writes benchmarks/results/raster.json and the table in docs/benchmarks.md.

    python benchmarks/raster.py            # full table (~10 minutes on 2 cores)
    python benchmarks/raster.py --quick    # N=10k at 128² only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, reset_peak_rss, rss_kb, write_doc_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "raster.json"


# ----------------------------------------------------------------- child side


def dense_composite(proj, colors, n_cameras, width, height):
    """Every entry at every pixel: [C, P, nnz] tensors (the naive baseline)."""
    import torch

    from splat3d.render.raster_torch import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_STOP

    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2).to(colors.dtype) + 0.5  # [P, 2]
    images, alphas = [], []
    for c in range(n_cameras):
        sel = torch.nonzero(proj.camera_ids == c, as_tuple=True)[0]
        order = sel[torch.argsort(proj.depths[sel].detach())]
        mean, conic, opac, col = proj.means2d[order], proj.conics[order], proj.opacities[order], colors[order]
        dx = pix[:, None, 0] - mean[None, :, 0]  # [P, n]
        dy = pix[:, None, 1] - mean[None, :, 1]
        sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
        alpha = torch.clamp_max(opac * torch.exp(-sigma), MAX_ALPHA)
        alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
        t_after = torch.cumprod(1 - alpha, dim=1)
        alive = (t_after > TRANSMITTANCE_STOP).detach()
        alpha = alpha * alive
        t_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), dim=1)
        w = alpha * t_before
        images.append((w @ col).reshape(height, width, -1))
        alphas.append(w.sum(1).reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas)


def child(method: str, n: int, size: int, reps: int) -> dict:
    import torch

    from splat3d.render import raster_torch
    from splat3d.render.cameras import turntable
    from splat3d.scene import GaussianScene

    torch.manual_seed(0)
    scene = GaussianScene.random_ball(
        n, radius=1.0, opacity=0.5, color=None, generator=torch.Generator().manual_seed(0)
    )
    cams = turntable(1, elevation=20.0, radius=3.0, fovy=40.0, width=size, height=size)

    def forward():
        if method == "torch":
            colors, alphas, _, info = raster_torch.rasterize(
                scene.means, scene.params["quats"], scene.scales, scene.opacities, scene.sh_coeffs,
                cams.viewmats, cams.Ks, size, size, sh_degree=0,
            )  # fmt: skip
            return colors, alphas
        proj = raster_torch.project(
            scene.means,
            scene.params["quats"],
            scene.scales,
            scene.opacities,
            cams.viewmats,
            cams.Ks,
            size,
            size,
        )
        colors = raster_torch.view_dependent_colors(
            scene.means, scene.sh_coeffs, 0, cams.viewmats, proj.camera_ids, proj.gaussian_ids
        )
        return dense_composite(proj, colors, 1, size, size)

    def fwd_bwd():
        colors, alphas = forward()
        (colors.sum() + alphas.sum()).backward()
        return colors, alphas

    with torch.no_grad():
        forward()  # warm-up
    base = reset_peak_rss()
    t_fwd, t_fb = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.no_grad():
            colors, alphas = forward()
        t_fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fwd_bwd()
        t_fb.append(time.perf_counter() - t0)
        for p in scene.params.values():
            p.grad = None
    peak = rss_kb("VmHWM") - base
    return {
        "method": method, "n": n, "size": size,
        "forward_s": statistics.median(t_fwd), "forward_backward_s": statistics.median(t_fb),
        "peak_extra_mb": peak / 1024, "coverage": float(alphas.mean()),
    }  # fmt: skip


# ---------------------------------------------------------------- parent side
def measure(method: str, n: int, size: int, reps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(n), str(size), str(reps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"method": method, "n": n, "size": size, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dense_gb(n: int, size: int) -> float:
    # ~15 float32 [pixels, n] tensors live at the peak of the dense backward (measured: 9.9 GB at 10k, 128²).
    return 15 * 4 * n * size * size / 1e9


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    lines = [
        "| N | size | torch fwd s | torch fwd+bwd s | torch peak MB | dense fwd+bwd s | dense peak MB |"
        " speed-up | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["method"], r["n"], r["size"]): r for r in rows}
    for n, size in sorted({(r["n"], r["size"]) for r in rows}):
        t = by_key.get(("torch", n, size), {})
        d = by_key.get(("dense", n, size), {})
        speed = mem = None
        if "forward_backward_s" in t and "forward_backward_s" in d:
            speed = d["forward_backward_s"] / t["forward_backward_s"]
            mem = t["peak_extra_mb"] / max(d["peak_extra_mb"], 1e-9)
        dense_fb = d.get("forward_backward_s")
        dense_note = d.get("skipped") or d.get("error")
        lines.append(
            f"| {n:,} | {size}² | {fmt(t.get('forward_s'), '.3f')} "
            f"| {fmt(t.get('forward_backward_s'), '.3f')} "
            f"| {fmt(t.get('peak_extra_mb'), '.0f')} "
            f"| {fmt(dense_fb, '.3f') if dense_fb is not None else dense_note} "
            f"| {fmt(d.get('peak_extra_mb'), '.0f')} | {fmt(speed, '.1f')}{'x' if speed else ''} "
            f"| {fmt(mem, '.3f')} |"
        )
    return "\n".join(lines)


def write_doc(rows: list[dict], machine_name: str) -> None:
    write_doc_section(
        "raster",
        "## Rasterizer: torch backend vs dense brute force\n\n"
        f"`python benchmarks/raster.py` on {machine_name}. One camera, a random ball of N Gaussians "
        "(radius 1, opacity 0.5, scale radius/N^⅓) seen from distance 3 with a 40° field of view. "
        "Times are medians of 3 runs; peak MB is the extra resident memory of the timed runs "
        "(fresh process each). Speed-up and memory ratio compare forward+backward, measured in the "
        "same run.\n\n" + table(rows),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only N=10k at 128²")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dense-limit-gb", type=float, default=12.0)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, n, size, reps = args.child
        print(json.dumps(child(method, int(n), int(size), int(reps))))
        return

    configs = [(10_000, 128)] if args.quick else [(n, s) for n in (1_000, 10_000, 50_000) for s in (64, 128, 256)]
    rows = []
    for n, size in configs:
        for method in ("torch", "dense"):
            if method == "dense" and dense_gb(n, size) > args.dense_limit_gb:
                rows.append({"method": method, "n": n, "size": size,
                             "skipped": f"skipped (~{dense_gb(n, size):.0f} GB)"})  # fmt: skip
            else:
                rows.append(measure(method, n, size, args.reps))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    if not args.quick:
        write_doc(rows, machine())


if __name__ == "__main__":
    main()
