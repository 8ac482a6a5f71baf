"""The 2D experiment: distillation without 3D. Particles are images optimised directly.

For each method, K particles (32x32 images, started grey with a little noise)
are optimised with Adam against the shapes prior for one prompt, all views
"front". VSD's score model is shared by the particles, as in ProlificDreamer.
Reported per method: the classifier's accuracy on the particles, and their
diversity: the mean pairwise distance of the classifier's features across
particles, next to the same spread for real renders of the prompt's object.
VSD's theory says its particles should be diverse and realistic while SDS
collapses to an over-saturated mode; this checks whether that holds here.

    python benchmarks/particles.py [--model shapes] [--particles 8] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_doc_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "particles.json"
PROMPTS = ("a red cube", "a blue house", "a yellow torus")


def features(classifier, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classifier.features(images * 2 - 1)


def spread(f: torch.Tensor) -> float:
    return torch.pdist(f).mean().item() if len(f) > 1 else 0.0


def optimise(model: str, method: str, prompt: str, k: int, steps: int, seed: int) -> torch.Tensor:
    from splat3d.distill.guidance import make_guidance
    from splat3d.distill.priors import load_prior
    from splat3d.distill.prompts import PromptProcessor
    from splat3d.render.cameras import orbit_cameras
    from splat3d.run.config import build_config

    cfg = build_config("cpu", prompt__prompt=prompt, method=method, seed=seed)
    prior = load_prior(model, "cpu")
    guidance = make_guidance(method, prior, PromptProcessor(prior, cfg.prompt), cfg.guidance)
    g = torch.Generator().manual_seed(seed)
    size = prior.image_size
    images = (0.5 + 0.05 * torch.randn(k, 3, size, size, generator=g)).requires_grad_(True)
    optimizer = torch.optim.Adam([images], lr=0.02)
    cams = orbit_cameras(15.0, torch.zeros(k), 3.0, 41.5, size, size)
    for step in range(steps):
        optimizer.zero_grad()
        guidance(images.clamp(0, 1), cams, step).loss.backward()
        optimizer.step()
    return images.detach().clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from splat3d.distill.priors import builtin_priors
    from splat3d.io.media import grid, save_png, to_uint8
    from splat3d.render import render
    from splat3d.render.cameras import CameraSampler
    from splat3d.shapes.evaluate import load_classifier
    from splat3d.shapes.train_prior import camera_config
    from splat3d.shapes.world import COLOURS, KINDS, make_object, parse_prompt

    folder = builtin_priors().get(args.model) or Path(args.model)
    classifier = load_classifier(folder)
    rows, pictures = [], []
    for prompt in PROMPTS:
        spec = parse_prompt(prompt)
        sampler = CameraSampler(camera_config(32), torch.Generator().manual_seed(args.seed))
        real = render(make_object(spec.colour, spec.kind), sampler.sample(0), 1.0).images.clamp(0, 1)
        real_spread = spread(features(classifier, real[: args.particles]))
        for method in ("sds", "vsd", "lvsd", "l2vsd"):
            particles = optimise(args.model, method, prompt, args.particles, args.steps, args.seed)
            with torch.no_grad():
                out = classifier(particles)
            ok_colour = out["colour"].argmax(1) == list(COLOURS).index(spec.colour)
            ok_kind = out["kind"].argmax(1) == KINDS.index(spec.kind)
            rows.append({
                "prompt": prompt, "method": method, "accuracy": (ok_colour & ok_kind).float().mean().item(),
                "colour_accuracy": ok_colour.float().mean().item(),
                "diversity": spread(features(classifier, particles)), "real_diversity": real_spread,
                "saturation": particles.amax(1).sub(particles.amin(1)).mean().item(),
            })  # fmt: skip
            pictures.append(grid([to_uint8(p) for p in particles], columns=args.particles))
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "steps": args.steps, "rows": rows}, indent=1))
    save_png(grid(pictures, columns=1), args.out.with_suffix(".png"))
    if args.out == RESULTS:
        table = ["| prompt | method | accuracy | diversity (real renders) | saturation |", "|---|---|---|---|---|"]
        table += [f"| {r['prompt']} | {r['method']} | {r['accuracy']:.2f} | {r['diversity']:.2f} "
                  f"({r['real_diversity']:.2f}) | {r['saturation']:.2f} |" for r in rows]  # fmt: skip
        write_doc_section(
            "particles",
            "## 2D particles: distillation without 3D\n\n"
            f"`python benchmarks/particles.py --particles {args.particles} --steps {args.steps}` on {machine()}. "
            "Rows of the picture (benchmarks/results/particles.png): each prompt, methods sds, vsd, lvsd, l2vsd.\n\n"
            + "\n".join(table),
        )


if __name__ == "__main__":
    main()
