"""Score distillation at Stable Diffusion's real size: seconds and memory per step.

A prior with SD 2.1-base's architecture and random weights (sd_shaped.py)
takes 512-px renders (64x64 latents, 4,096 attention tokens at the first UNet
level) in float16 on CUDA, float32 on CPU. One step is one guidance call on a
batch of renders plus the backward pass to the renders: the VAE encoder's
gradient and the LoRA update included, the rasterizer not (scripts/gpu_check.py
times it). Methods: sds, vsd, l2vsd with the exact jvp and with the finite
difference. 'vs VSD' is measured in the same run.

- CUDA: batch 1 and 4, all methods in one process, peak memory from the CUDA
  allocator (reset per method); projects minutes per asset at the gpu
  preset's step count.
- CPU: batch 1, a handful of steps, each method in a fresh process (peak RSS
  is its own).

Also times the parts of one step at batch 1 (UNet forward with the default
attention kernels, the LoRA branch's forward with math attention, the jvp,
the LoRA's forward + backward, the VAE encoder's forward + backward) and
tries forward-mode AD through the fused memory-efficient attention kernel.

    python benchmarks/sd_scale.py                      # CUDA if present, else CPU
    python benchmarks/sd_scale.py --out results.json   # JSON elsewhere (the GPU check's $OUT)
    python benchmarks/sd_scale.py --report results.json  # the docs table from a saved run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, reset_peak_rss, rss_kb, write_doc_section  # noqa: E402

METHODS = {  # label: (method, guidance overrides)
    "sds": ("sds", {"guidance_scale": 100.0}),
    "vsd": ("vsd", {}),
    "l2vsd (exact)": ("l2vsd", {"linear_term": "exact"}),
    "l2vsd (finite_difference)": ("l2vsd", {"linear_term": "finite_difference"}),
}
SIZE = 512  # render size: SD 2.1-base's 512 px, 64x64 latents


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def setup(method: str, overrides: dict, batch: int, device, reduced: bool = False):
    import torch
    from sd_shaped import make_sd_shaped_prior

    from splat3d.distill.guidance import GuidanceConfig, make_guidance
    from splat3d.distill.prompts import PromptConfig, PromptProcessor
    from splat3d.render.cameras import orbit_cameras

    torch.manual_seed(0)
    prior = make_sd_shaped_prior(device, reduced=reduced)
    guidance = make_guidance(
        method, prior, PromptProcessor(prior, PromptConfig("a corgi")), GuidanceConfig(**overrides)
    )
    images = torch.rand(batch, 3, SIZE, SIZE, device=device).requires_grad_(True)
    cams = orbit_cameras(20.0, torch.arange(batch) * (360.0 / batch), 3.0, 40.0, SIZE, SIZE).to(device)
    return guidance, images, cams


def run_method(label: str, batch: int, device, warmup: int, steps: int, reduced: bool = False) -> dict:
    """Seconds per step (median) and peak memory of one method, in this process."""
    import torch

    method, overrides = METHODS[label]
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    guidance, images, cams = setup(method, overrides, batch, device, reduced)

    def step(i):
        images.grad = None
        out = guidance(images, cams, i)
        out.loss.backward()
        return out

    for i in range(warmup):
        step(i)
    _sync(device)
    base_rss = reset_peak_rss()
    times = []
    for i in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        out = step(i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    result = {
        "method": label, "batch": batch, "device": device.type, "steps": steps,
        "seconds": statistics.median(times), "seconds_all": times,
        "finite": bool(torch.isfinite(out.loss).item() and torch.isfinite(images.grad).all().item()),
        "peak_rss_mb": rss_kb("VmHWM") / 1024, "rss_before_steps_mb": base_rss / 1024,
    }  # fmt: skip
    if device.type == "cuda":
        result["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_cuda_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return result


def components(device, reps: int, reduced: bool = False) -> dict:
    """The parts of one L2-VSD step at batch 1, alone (seconds), and forward AD through fused attention."""
    import torch
    import torch.autograd.forward_ad as fwAD
    from torch.nn.attention import SDPBackend, sdpa_kernel

    guidance, images, cams = setup("l2vsd", {}, 1, device, reduced)
    score, prior = guidance.score, guidance.prior
    inputs = guidance.prepare(images, cams, 0)
    args = (inputs.x_t, inputs.draw.t, inputs.text, inputs.camera)
    direction = {n: torch.randn_like(p) * 1e-3 for n, p in score.params.items()}

    def timed(fn):
        fn()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        return (time.perf_counter() - t0) / reps

    def vae_fwd_bwd():
        x = images.detach().requires_grad_(True)
        prior.encode_images(x).sum().backward()

    def unet_math():
        with sdpa_kernel([SDPBackend.MATH]):
            prior.unet_output(*args[:3])

    with torch.no_grad():
        plain = timed(lambda: prior.unet_output(*args[:3]))
        math_fwd = timed(unet_math)
    parts = {"UNet forward, default attention kernels": plain, "UNet forward, math attention": math_fwd}
    for name, fn in {
        "LoRA branch forward (math attention)": lambda: score.eps(*args),
        "LoRA branch forward + jvp (exact)": lambda: score.eps_and_jvp(*args, direction),
        "LoRA loss forward + backward": lambda: score.compute_gradient(
            inputs.z, inputs.draw, inputs.text, inputs.camera
        ),
        "VAE encoder forward + backward (512 px)": vae_fwd_bwd,
    }.items():
        try:
            parts[name] = timed(fn)
        except Exception as e:  # noqa: BLE001 - report the others
            print(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    fused = {}
    if device.type == "cuda":  # can forward AD go through a fused kernel instead of math attention?
        for name, backend in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                q = torch.randn(1, 5, 4096, 64, device=device, dtype=prior.dtype)
                with fwAD.dual_level(), sdpa_kernel([backend]):
                    dq = fwAD.make_dual(q, torch.randn_like(q))
                    out = torch.nn.functional.scaled_dot_product_attention(dq, q, q)
                    fwAD.unpack_dual(out).tangent.sum().item()
                fused[name] = "supported"
            except Exception as e:  # noqa: BLE001 - report what the kernel says
                fused[name] = f"unsupported: {str(e).splitlines()[0][:120]}"
    return {"seconds": parts, "forward_ad_fused_attention": fused}


def child(payload: str) -> None:
    import torch

    label, batch, warmup, steps, reduced = json.loads(payload)
    print(json.dumps(run_method(label, batch, torch.device("cpu"), warmup, steps, reduced)))


def measure_cpu(label: str, warmup: int, steps: int, reduced: bool) -> dict:
    payload = json.dumps([label, 1, warmup, steps, reduced])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", payload], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gpu_preset_steps() -> int:
    from splat3d.run.config import build_config

    return build_config("gpu", prompt__prompt="a corgi").steps


def report(results: dict, write_doc: bool = True) -> str:
    rows, device = results["rows"], results["device"]
    vsd = {r["batch"]: r["seconds"] for r in rows if r["method"] == "vsd"}
    mem_col = "peak CUDA allocated GB" if device == "cuda" else "peak RSS GB"
    lines = [f"| batch | method | s / step | vs VSD | {mem_col} | finite |", "|---|---|---|---|---|---|"]
    for r in rows:
        mem = r["peak_cuda_allocated_mb"] if device == "cuda" else r["peak_rss_mb"]
        ratio = r["seconds"] / vsd[r["batch"]] if r["batch"] in vsd else float("nan")
        lines.append(f"| {r['batch']} | {r['method']} | {r['seconds']:.3f} | {ratio:.2f}x | {mem / 1024:.1f} "
                     f"| {'yes' if r['finite'] else 'NO'} |")  # fmt: skip
    table = "\n".join(lines)
    parts = results.get("components", {})
    comp = "\n".join(f"| {k} | {v * 1000:.0f} |" for k, v in parts.get("seconds", {}).items())
    fused = "; ".join(f"{k}: {v}" for k, v in parts.get("forward_ad_fused_attention", {}).items())
    projection = ""
    if device == "cuda":
        steps = results["gpu_preset_steps"]
        proj = [f"{r['method']} {r['seconds'] * steps / 60:.1f} min" for r in rows if r["batch"] == 1]
        projection = (f"\n\nProjected guidance time per asset at the gpu preset's {steps} steps, batch 1 "
                      f"(rasterizer excluded): {', '.join(proj)}.")  # fmt: skip
    text = (
        table
        + (f"\n\nParts of one L2-VSD step at batch 1 (ms):\n\n| part | ms |\n|---|---|\n{comp}" if comp else "")
        + (f"\n\nForward-mode AD through fused attention kernels: {fused}." if fused else "")
        + projection
    )
    print(text)
    if write_doc:
        section = "sd-scale-cuda" if device == "cuda" else "sd-scale-cpu"
        where = results["machine"] + (f", {results['gpu']}" if results.get("gpu") else "")
        write_doc_section(
            section,
            f"## Stable Diffusion 2.1-base size, {'CUDA' if device == 'cuda' else 'CPU'}\n\n"
            f"`{results['command']}` on {where}. A prior with SD 2.1-base's architecture "
            f"(UNet 865.9M, VAE 83.7M, text encoder 340.4M parameters) and random weights "
            f"(benchmarks/sd_shaped.py), {results['dtype']}, 512-px renders (64x64 latents); a step is the "
            f"guidance call plus the backward pass to the renders (VAE encoder and LoRA update included, "
            f"rasterizer not); median of {results['steps']} timed steps after {results['warmup']} warm-up "
            f"steps.\n\n" + text,
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, help="timed steps per method (default: 6 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 2 on CUDA, 1 on CPU)")
    parser.add_argument("--batch", type=int, nargs="+", help="views per step (default: 1 4 on CUDA, 1 on CPU)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--reduced", action="store_true", help="a small-width SD-shaped prior (a smoke test)")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/sd_scale_DEVICE.json)")
    parser.add_argument("--report", type=Path, help="write the docs section from a saved JSON and stop")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--no-parts", action="store_true", help="skip timing the parts of one step")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if args.report:  # the projection uses the gpu preset's step count as it is now
        report({**json.loads(args.report.read_text()), "gpu_preset_steps": gpu_preset_steps()}, not args.no_doc)
        return

    import torch

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    cuda = device.type == "cuda"
    steps = args.steps or (6 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    batches = args.batch or ([1, 4] if cuda else [1])
    results = {
        "machine": machine(), "device": device.type, "gpu": torch.cuda.get_device_name() if cuda else None,
        "dtype": "float16" if cuda else "float32", "steps": steps, "warmup": warmup, "reduced": args.reduced,
        "command": "python benchmarks/sd_scale.py " + " ".join(sys.argv[1:]).replace(str(args.out or ""), "OUT.json"),
        "gpu_preset_steps": gpu_preset_steps(), "rows": [],
    }  # fmt: skip
    out = args.out or ROOT / "benchmarks" / "results" / f"sd_scale_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out.write_text(json.dumps(results, indent=1))

    for batch in batches:
        for label in args.methods:
            try:
                if cuda:
                    r = run_method(label, batch, device, warmup, steps, args.reduced)
                else:
                    r = measure_cpu(label, warmup, steps, args.reduced)
            except Exception as e:  # noqa: BLE001 - one method failing (e.g. out of memory) must not lose the others
                r = {"method": label, "batch": batch, "error": str(e).strip().splitlines()[-1][:300]}
                if cuda:
                    torch.cuda.empty_cache()
            print(json.dumps({k: v for k, v in r.items() if k != "seconds_all"}), flush=True)
            results["rows"].append(r)
            save()
    results["rows"] = [r for r in results["rows"] if "error" not in r] + [r for r in results["rows"] if "error" in r]
    try:
        if not args.no_parts:
            results["components"] = components(device, reps=5 if cuda else 1, reduced=args.reduced)
    except Exception as e:  # noqa: BLE001
        results["components"] = {"error": str(e).strip().splitlines()[-1][:300]}
    save()
    ok_rows = [r for r in results["rows"] if "error" not in r]
    report({**results, "rows": ok_rows}, write_doc=not args.no_doc and not args.reduced)
    for r in results["rows"]:
        if "error" in r:
            print(f"FAILED: {r['method']} batch {r['batch']}: {r['error']}")


if __name__ == "__main__":
    main()
