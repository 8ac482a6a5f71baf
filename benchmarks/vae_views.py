"""Does a latent prior's autoencoder keep what tells an object's views apart?

A latent prior can only draw what its VAE decodes, and distillation with the decoded target
(`guidance.latent_gradient: decoded`) only pulls the renders toward decoded images. If the VAE's
reconstruction of a true house front has no door, no distillation through it can put a door on the front.

For every colour x kind with a front (house, mug), renders the true object from the evaluator's ring (12
views, elevation 15°) at the prior's resolution, passes each render through the VAE (posterior mean, then
decode) and asks the evaluator's classifier which view the true render and the reconstruction show. Prints
view accuracy per kind and colour and the evaluator's view consistency (front seen where the camera is in
front) of the reconstructions; writes benchmarks/results/vae_views.json (or --out) and a picture of each
colour's house front and mug side, true above reconstruction (--picture).

    python benchmarks/vae_views.py [--model shapes] [--vae FOLDER] [--out FILE] [--picture FILE.png]

--vae checks another autoencoder (a diffusers AutoencoderKL folder, e.g. one trained for a next prior) with the
same classifier, before any UNet is trained on its latents.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "vae_views.json"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="a latent prior with a classifier (default: shapes)")
    parser.add_argument("--vae", type=Path, default=None, help="an AutoencoderKL folder to check, not the prior's")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--picture", type=Path, default=None, help="PNG: house fronts and mug sides, true over VAE")
    args = parser.parse_args()

    from splat3d.distill.priors import builtin_priors, load_prior
    from splat3d.distill.prompts import VIEWS, PromptConfig, view_names
    from splat3d.render.rasterize import render
    from splat3d.shapes.evaluate import load_classifier, ring_cameras
    from splat3d.shapes.world import COLOURS, FRONTED, make_object

    prior = load_prior(args.model, "cpu")
    if not prior.is_latent:
        raise SystemExit(f"{args.model} is a pixel-space prior: it has no autoencoder to check")
    folder = builtin_priors().get(args.model, Path(args.model))
    classifier, vae = load_classifier(folder), prior.vae.float().eval()
    if args.vae is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32).eval()
    cams = ring_cameras(size=int(vae.config.sample_size))
    true_view = view_names(cams.elevation, cams.azimuth, PromptConfig())
    rows, strips, t0 = [], [], time.perf_counter()
    for kind in FRONTED:
        for colour in COLOURS:
            images = render(make_object(colour, kind), cams, 1.0, backend="torch").images.clamp(0, 1)
            recon = (vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
            seen = {name: [VIEWS[i] for i in classifier(x)["view"].argmax(1).tolist()]
                    for name, x in (("true", images), ("vae", recon))}  # fmt: skip
            row = {"kind": kind, "colour": colour, "true_view": true_view, **{f"seen_{k}": v for k, v in seen.items()}}
            for name, views in seen.items():
                row[f"view_right_{name}"] = sum(v == t for v, t in zip(views, true_view)) / len(views)
                fronts = [(v == "front") == (t == "front") for v, t in zip(views, true_view)]
                row[f"consistency_{name}"] = sum(fronts) / len(fronts)
            row["pixel_error_vae"] = (recon - images).abs().mean().item()
            rows.append(row)
            shown = true_view.index("front") if kind == "house" else true_view.index("side")
            strips.append(torch.cat([images[shown], recon[shown]], 1))
            right = f"true {row['view_right_true']:.2f}  VAE {row['view_right_vae']:.2f}"
            print(f"{colour:7s} {kind:5s} views right: {right}  | VAE sees {' '.join(v[:2] for v in seen['vae'])}")
    result = {
        "model": str(args.model), "vae": str(args.vae or "the prior's"), "machine": machine(),
        "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
        **{f"{kind}_{m}_{name}": sum(r[f"{m}_{name}"] for r in rows if r["kind"] == kind) / len(COLOURS)
           for kind in FRONTED for m in ("view_right", "consistency") for name in ("true", "vae")},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("\n| kind | views right: true renders | VAE reconstructions | view consistency: true | VAE |")
    print("|---|---|---|---|---|")
    for kind in FRONTED:
        print(f"| {kind} | {result[f'{kind}_view_right_true']:.3f} | {result[f'{kind}_view_right_vae']:.3f} | "
              f"{result[f'{kind}_consistency_true']:.3f} | {result[f'{kind}_consistency_vae']:.3f} |")  # fmt: skip
    print(f"wrote {args.out}")
    if args.picture:
        from splat3d.io.media import save_png

        save_png(torch.cat(strips, 2), args.picture)
        print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
