"""Where a run's Gaussians start: a random ball, or a .ply scene."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from splat3d.errors import Splat3dError
from splat3d.scene.gaussians import GaussianScene
from splat3d.scene.ply import read_ply


@dataclass
class InitConfig:
    """Where the Gaussians start."""

    kind: str = "ball"
    """ball (random points in a ball) or ply (the file in path)."""
    path: Optional[str] = None
    count: int = 2000
    radius: float = 0.6
    opacity: float = 0.1
    color: Optional[List[float]] = None
    """One RGB for all Gaussians; null draws random colours."""
    sh_degree: int = 0

    def __post_init__(self):
        if self.kind not in ("ball", "ply"):
            raise Splat3dError(f"Unknown init {self.kind!r}; choose ball or ply.")
        if self.kind == "ply" and not self.path:
            raise Splat3dError("init.kind is ply but init.path is empty; pass --init SCENE.ply.")
        if self.kind == "ball" and (self.count < 1 or not 0 < self.opacity < 1 or self.radius <= 0):
            raise Splat3dError("init needs count >= 1, 0 < opacity < 1 and a positive radius.")
        if not 0 <= self.sh_degree <= 3:
            raise Splat3dError(f"init.sh_degree must be 0..3, got {self.sh_degree}.")


def initial_scene(config: InitConfig, seed: int) -> GaussianScene:
    if config.kind == "ply":
        return read_ply(config.path).with_sh_degree(config.sh_degree)
    return GaussianScene.random_ball(
        config.count, config.radius, config.opacity, config.color, config.sh_degree,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
