"""Mesh export: time, and how closely the mesh stands for its splats and for the true object.

For each scene: the time of `extract_mesh` at the default settings (one process, this machine's
threads), the mesh's silhouette IoU against the splat renders over 8 views, its volume IoU against
the true object (voxelised), whether it is watertight, and its face count. Scenes: the shapes world's
true objects (a cube of 5,000 Gaussians for the time target), plus any run folders given.

    python benchmarks/export.py [--runs RUN_DIR ...] [--out benchmarks/results/export.json]

Writes the JSON and a table in docs/benchmarks.md (section "export").

    python benchmarks/export.py --volume-ceiling --runs SCENES/*.ply [--out FILE]

asks how far volume IoU could go on each scene whatever the surface's placement: the carved occupancy (depth
tolerance 6 and 2) moved in or out by whole cells (its signed distance, blurred as the mesher blurs, cut at
-2 ... 10 cells), each compared with the true solid at the grid's cell centres. If no offset reaches 0.80, no
mesh that follows the splats can: the scene itself is off the true object.
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

RESULTS = ROOT / "benchmarks" / "results" / "export.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, default=[],
                        help="run folders of shapes-world prompts, or .ply files whose names hold the prompt "
                        "(benchmarks/distill.py --keep-scenes writes them)")  # fmt: skip
    parser.add_argument("--kinds", default="cube,sphere,torus,house", help="true objects to include ('' for none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--volume-ceiling", action="store_true",
                        help="volume IoU of the carved occupancy moved in or out, per scene (no meshing)")  # fmt: skip
    args = parser.parse_args()

    from splat3d.render.mesh import MeshConfig, extract_mesh
    from splat3d.run.config import build_config
    from splat3d.run.folder import RunFolder, load_scene
    from splat3d.shapes.evaluate import evaluate_mesh
    from splat3d.shapes.world import make_object, parse_prompt

    scenes = [(f"true {k}" + (" (5,000 Gaussians)" if k == "cube" else ""), k,
               make_object("red", k, n=5000 if k == "cube" else 2500)) for k in args.kinds.split(",") if k]  # fmt: skip
    for run in args.runs:
        ply = run.suffix == ".ply"  # e.g. l2vsd-fd-x1-a-purple-torus-s0.ply
        prompt = run.stem.replace("-", " ") if ply else build_config(str(RunFolder(run).config_path)).prompt.prompt
        spec = parse_prompt(prompt)
        scenes.append((f"run {run.stem if ply else run.name}", spec.kind if spec else None, load_scene(run)))
    if args.volume_ceiling:
        return volume_ceiling(scenes, args.out if args.out != RESULTS else RESULTS.with_name("export-ceiling.json"))
    config = MeshConfig()
    rows = []
    for name, kind, scene in scenes:
        t0 = time.perf_counter()
        mesh = extract_mesh(scene, config)
        seconds = time.perf_counter() - t0
        row = {"scene": name, "gaussians": len(scene), "seconds": round(seconds, 2), **evaluate_mesh(mesh, scene, kind)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": machine(), "threads": torch.get_num_threads(), "config": vars(config), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    table = "| scene | Gaussians | seconds | silhouette IoU | volume IoU | watertight | faces |\n"
    table += "|---|---|---|---|---|---|---|\n"
    for r in rows:
        volume = f"{r['volume_iou']:.3f}" if "volume_iou" in r else ""
        table += (f"| {r['scene']} | {r['gaussians']:,} | {r['seconds']:.1f} | {r['silhouette_iou']:.3f} | {volume} | "
                  f"{'yes' if r['watertight'] else 'no'} | {r['faces']:,} |\n")  # fmt: skip
    if args.out == RESULTS:
        write_doc_section(
            "export",
            "## Mesh export\n\n"
            f"`python benchmarks/export.py` on {machine()} ({result['threads']} threads), default settings "
            f"(resolution {config.resolution}, {config.views} carving views of {config.view_size} px, {config.votes} "
            f"votes, depth tolerance {config.depth_tolerance:g} cells). Silhouette IoU: mesh against splat render "
            "(alpha > 0.5), 8 views at 128 px; volume IoU: against the true object, voxelised at 0.02.\n\n" + table,
        )


def volume_ceiling(scenes: list, out: Path, offsets=(-2, 0, 2, 4, 6, 8, 10)) -> None:
    import numpy as np
    from scipy import ndimage

    from splat3d.render.mesh import MeshConfig, carve
    from splat3d.shapes.evaluate import true_solid

    rows = []
    for name, kind, scene in scenes:
        for tolerance in (6.0, 2.0):
            solid, origin, cell = carve(scene, MeshConfig(depth_tolerance=tolerance))
            inside = ndimage.distance_transform_edt(solid) - ndimage.distance_transform_edt(~solid)  # cells, + inside
            inside = ndimage.gaussian_filter(inside.astype(np.float32), 1.0)
            axes = [origin[d] + (np.arange(solid.shape[d]) + 0.5) * cell for d in range(3)]
            points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
            truth, inside = true_solid(kind, torch.from_numpy(points)).numpy(), inside.reshape(-1)
            ious = {o: float(((inside > o) & truth).sum() / max(((inside > o) | truth).sum(), 1)) for o in offsets}
            rows.append({"scene": name, "depth_tolerance": tolerance, "cell": cell, "volume_iou_by_offset": ious})
            print(f"{name:45s} tolerance {tolerance:g}: " + "  ".join(f"{o:+d} {v:.3f}" for o, v in ious.items())
                  + f"  | best {max(ious.values()):.3f}", flush=True)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "offsets_in_cells": list(offsets), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
