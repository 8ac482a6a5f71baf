"""How good is the shapes prior in 2D? Its own samples, judged by the evaluator's classifier.

For every (colour, kind) of the world and every phrasing (plain, front,
side, back, overhead view), draws --samples DDIM samples (50 steps, at the
CFG scale and DDIM eta the prior recommends) and classifies them. Reports
colour, kind and joint accuracy overall and per phrasing, and for the kinds
with a front (house, mug) asked for a view, how often the classifier sees the
view that was asked for; writes
benchmarks/results/shapes_prior.json, a picture of one sample per object,
and a table in docs/benchmarks.md.

    python benchmarks/shapes_prior.py [--model shapes] [--samples 1] [--steps 50] [--guidance-scale G] [--eta E]
                                      [--seed S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_doc_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "shapes_prior.json"
PHRASINGS = ("", ", front view", ", side view", ", back view", ", overhead view")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: what the prior recommends")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta; default: what the prior recommends")
    parser.add_argument(
        "--view-guidance-scale",
        type=float,
        default=None,
        help="CFG scale of the view phrase; default: what the prior recommends",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the first batch of samples")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from splat3d.distill.priors import builtin_priors, load_prior
    from splat3d.distill.prompts import VIEWS
    from splat3d.distill.sample import sample_images
    from splat3d.io.media import grid, save_png, to_uint8
    from splat3d.shapes.evaluate import load_classifier
    from splat3d.shapes.world import COLOURS, FRONTED, KINDS

    prior = load_prior(args.model, "cpu")
    if args.guidance_scale is None:
        args.guidance_scale = prior.sample_guidance_scale
    if args.eta is None:
        args.eta = prior.sample_eta
    if args.view_guidance_scale is None:
        args.view_guidance_scale = prior.sample_view_guidance_scale
    classifier = load_classifier(builtin_priors().get(args.model) or Path(args.model))
    objects = [(c, k) for c in COLOURS for k in KINDS]
    prompts = [(c, k, p) for p in PHRASINGS for c, k in objects for _ in range(args.samples)]
    t0 = time.perf_counter()
    images = torch.cat([
        sample_images(prior, [f"a {c} {k}{p}" for c, k, p in prompts[i : i + 120]], args.steps, args.guidance_scale,
                      seed=args.seed + i, eta=args.eta, view_guidance_scale=args.view_guidance_scale)
        for i in range(0, len(prompts), 120)
    ])  # fmt: skip
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        out = classifier(images)
    colour_ok = out["colour"].argmax(1) == torch.tensor([list(COLOURS).index(c) for c, _, _ in prompts])
    kind_ok = out["kind"].argmax(1) == torch.tensor([KINDS.index(k) for _, k, _ in prompts])
    both = colour_ok & kind_ok
    per_phrasing = {
        (p.strip(", ") or "plain"): both[[i for i, x in enumerate(prompts) if x[2] == p]].float().mean().item()
        for p in PHRASINGS
    }
    per_kind = {k: both[[i for i, x in enumerate(prompts) if x[1] == k]].float().mean().item() for k in KINDS}
    # The view: only objects with a front have one to get right, and only view phrasings ask for one.
    asked = [i for i, (_, k, p) in enumerate(prompts) if k in FRONTED and p]
    view_asked = torch.tensor([VIEWS.index(prompts[i][2].split()[-2]) for i in asked])
    view_ok = out["view"][asked].argmax(1) == view_asked
    per_view = {v: view_ok[view_asked == j].float().mean().item() for j, v in enumerate(VIEWS)}
    result = {
        "machine": machine(), "model": args.model, "samples": len(prompts), "ddim_steps": args.steps,
        "guidance_scale": args.guidance_scale, "eta": args.eta, "view_guidance_scale": args.view_guidance_scale,
        "seed": args.seed, "seconds": seconds,
        "colour_accuracy": colour_ok.float().mean().item(),
        "kind_accuracy": kind_ok.float().mean().item(), "accuracy": both.float().mean().item(),
        "per_phrasing": per_phrasing, "per_kind": per_kind,
        "view_accuracy": view_ok.float().mean().item(), "view_samples": len(asked), "per_view": per_view,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    first = [i for i, x in enumerate(prompts) if x[2] == ""][:: args.samples]
    save_png(grid([to_uint8(images[i]) for i in first], columns=len(KINDS)), args.out.with_suffix(".png"))
    if args.out == RESULTS:
        write_doc_section(
            "shapes_prior",
            "## The shapes prior in 2D\n\n"
            f"`python benchmarks/shapes_prior.py` on {machine()}: {len(prompts)} DDIM samples ({args.steps} steps, "
            f"CFG {args.guidance_scale}, view CFG {args.view_guidance_scale}, eta {args.eta}), "
            "every colour x kind x phrasing, judged by the evaluator's "
            "classifier "
            f"({seconds:.0f} s).\n\n"
            f"| | colour | kind | both |\n|---|---|---|---|\n| all | {result['colour_accuracy']:.3f} | "
            f"{result['kind_accuracy']:.3f} | {result['accuracy']:.3f} |\n\n"
            + "Per phrasing (both right): "
            + ", ".join(f"{k} {v:.2f}" for k, v in per_phrasing.items())
            + "\n\nPer kind (both right): "
            + ", ".join(f"{k} {v:.2f}" for k, v in per_kind.items())
            + f"\n\nView asked = view seen ({', '.join(FRONTED)}, {len(asked)} samples): "
            + f"**{result['view_accuracy']:.3f}** ("
            + ", ".join(f"{k} {v:.2f}" for k, v in per_view.items())
            + ")\n\n![one sample per object](../benchmarks/results/shapes_prior.png)\n",
        )


if __name__ == "__main__":
    main()
