"""How far a scene reaches from the origin."""

from __future__ import annotations

import torch

from splat3d.scene.gaussians import GaussianScene


def scene_extent(scene: GaussianScene, quantile: float) -> float:
    """The radius around the origin within which ``quantile`` of the Gaussians' centres lie (at least 1e-3).

    Callers pick the quantile for their purpose: the trainer scales the means'
    learning rate by the bulk (0.9), a camera that frames the scene wants
    nearly all of it in view (0.98). An empty scene reaches 1.
    """
    means = scene.means.detach()
    if not len(means):
        return 1.0
    return max(float(torch.quantile(means.norm(dim=-1).double(), quantile)), 1e-3)
