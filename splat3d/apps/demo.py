"""The built-in demo scene: a red sphere beside a blue cube whose front (+x)
face is yellow, made of surface Gaussians. It needs no model and no network."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from splat3d.scene.gaussians import GaussianScene, rgb_to_sh0
from splat3d.scene.ply import write_ply


def _surface(points: torch.Tensor, rgb: torch.Tensor, scale: float) -> dict:
    n = len(points)
    return {
        "means": points,
        "scales": torch.full((n, 3), math.log(scale)),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4),
        "opacities": torch.full((n,), 2.5),
        "sh0": rgb_to_sh0(rgb)[:, None],
    }


def demo_scene(n_per_object: int = 3000, seed: int = 0) -> GaussianScene:
    g = torch.Generator().manual_seed(seed)
    # Sphere of radius 0.45 centred at y = -0.55.
    dirs = torch.nn.functional.normalize(torch.randn(n_per_object, 3, generator=g), dim=-1)
    sphere_rgb = torch.tensor([0.85, 0.15, 0.12]) + 0.1 * dirs[:, 2:3]
    sphere = _surface(dirs * 0.45 + torch.tensor([0.0, -0.55, 0.0]), sphere_rgb.clamp(0, 1), 0.035)
    # Cube of half-side 0.35 centred at y = +0.55: pick a face, then a point on it.
    face = torch.randint(0, 6, (n_per_object,), generator=g)
    uv = torch.rand(n_per_object, 2, generator=g) * 0.7 - 0.35
    axis, sign = face // 2, (face % 2) * 2 - 1
    pts = torch.zeros(n_per_object, 3)
    others = torch.tensor([[1, 2], [0, 2], [0, 1]])[axis]
    pts.scatter_(1, axis[:, None], sign[:, None].float() * 0.35)
    pts.scatter_(1, others, uv)
    front = (axis == 0) & (sign > 0)
    cube_rgb = torch.where(front[:, None], torch.tensor([0.95, 0.8, 0.1]), torch.tensor([0.15, 0.3, 0.85]))
    cube = _surface(pts + torch.tensor([0.0, 0.55, 0.0]), cube_rgb, 0.03)
    return GaussianScene(**{k: torch.cat([sphere[k], cube[k]]) for k in sphere})


def save_demo(folder: Path) -> tuple[Path, int]:
    """Write the demo scene to FOLDER/scene.ply; returns the path and its Gaussian count."""
    scene = demo_scene()
    path = Path(folder) / "scene.ply"
    write_ply(scene, path)
    return path, len(scene)
