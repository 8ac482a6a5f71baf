"""The Gaussians' optimisers: one Adam per parameter group, with 3DGS's learning rates."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splat3d.scene import PARAM_NAMES, GaussianScene


@dataclass
class OptimConfig:
    """Adam learning rates per parameter group (as in 3DGS) and regularisers."""

    means_lr: float = 1e-3
    """Scaled by the scene extent (the init radius), decayed exponentially to means_lr_final."""
    means_lr_final: float = 1e-5
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 1e-2
    shN_lr: float = 5e-4
    background_lr: float = 1e-2
    opacity_reg: float = 0.0
    """Weight of mean opacity (pushes unused Gaussians towards transparency)."""
    scale_reg: float = 0.0
    """Weight of the mean largest scale (discourages huge Gaussians)."""


def learning_rates(config: OptimConfig, progress: float, extent: float) -> dict[str, float]:
    """Per group at ``progress`` in [0, 1] of the run: the means' lr decays exponentially and scales with extent."""
    means = config.means_lr * (config.means_lr_final / config.means_lr) ** progress
    return {
        "means": means * extent, "scales": config.scales_lr, "quats": config.quats_lr,
        "opacities": config.opacities_lr, "sh0": config.sh0_lr, "shN": config.shN_lr,
    }  # fmt: skip


def make_optimizers(scene: GaussianScene, lrs: dict[str, float]) -> dict[str, torch.optim.Optimizer]:
    # One Adam per parameter, as gsplat's strategies expect (they swap tensors and their moments by name).
    return {name: torch.optim.Adam([scene.params[name]], lr=lrs[name], eps=1e-15) for name in PARAM_NAMES}
