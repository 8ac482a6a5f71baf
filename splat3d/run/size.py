"""Size calibration: rescale the scene so that its silhouettes cover as much of the frame as the prior's own
images of the prompt do.

Why: score distillation hardly changes an object's size. Measured on the built-in shapes prior (300 L2-VSD
steps, cpu preset): the object fills the init ball whatever it is. With init radius 0.6 a mug comes out at
1.41x the true silhouette area and a pyramid at 1.32x; with 0.4 a cube comes out at 0.53x. A mean moves at
most a few hundredths of a unit in such a run, and the noise-level-weighted gradient that a shared scale
would follow points outward once timesteps are small (docs/shapes.md, "Object size"). The prior itself
draws objects at the right size (its samples' mean foreground area is within 4-6% of its training renders'),
so one comparison with its samples fixes the scale.

Only for priors that draw on a plain white background (the built-in shapes prior, the cpu preset): the
foreground is "not white", in the prior's images and in white-background renders alike. Written here because
no library offers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
from torch import Tensor

from splat3d.distill.prompts import PromptConfig, view_names, view_prompt
from splat3d.distill.sample import sample_images
from splat3d.errors import Splat3dError
from splat3d.render import render
from splat3d.render.cameras import CameraConfig, orbit_cameras
from splat3d.scene import GaussianScene

FOREGROUND = 0.15
"""A pixel is foreground when some channel lies this far below white."""


@dataclass
class SizeConfig:
    """Match the object's size to the prior's own images of the prompt (white-background priors only)."""

    calibrate_at: List[float] = field(default_factory=list)
    """Fractions of the run after whose step the scene is rescaled about the origin; [] never."""
    views: int = 16
    """Views round the object (at the camera ranges' middle elevation, radius and field of view), one
    prior sample each, phrased with the view's word."""
    sample_steps: int = 25
    """DDIM steps per prior sample."""
    max_factor: float = 1.5
    """The most one calibration scales by (or 1 / this, shrinking)."""

    def __post_init__(self):
        if any(not 0 < f <= 1 for f in self.calibrate_at):
            raise Splat3dError(f"size.calibrate_at {list(self.calibrate_at)} must hold fractions in (0, 1].")
        if self.views < 1 or self.sample_steps < 1 or self.max_factor < 1:
            raise Splat3dError("size.views and size.sample_steps must be positive, and size.max_factor at least 1.")


def calibration_steps(config: SizeConfig, steps: int) -> set[int]:
    """The steps (counted from 1, as the run's step counter after them) at which the scene is rescaled."""
    return {max(1, round(f * steps)) for f in config.calibrate_at}


def foreground_share(images: Tensor) -> Tensor:
    """Share of foreground pixels of white-background images [N, 3, H, W] in [0, 1]."""
    return ((1 - images.clamp(0, 1)).amax(1) > FOREGROUND).float().mean()


@torch.no_grad()
def rescale_scene(scene: GaussianScene, log_scale: float) -> None:
    """Scale the scene by exp(log_scale) about the origin, in place: positions and sizes alike (the
    optimisers' moments stay: they only rescale the next few steps a little)."""
    scene.params["means"].mul_(math.exp(log_scale))
    scene.params["scales"].add_(log_scale)


def ring(config: SizeConfig, camera: CameraConfig, size: int):
    """``config.views`` cameras evenly round the object at the middle of the camera ranges."""
    azimuth = torch.arange(config.views) * (360.0 / config.views)
    mid = lambda r: sum(r) / 2  # noqa: E731
    return orbit_cameras(
        mid(camera.elevation_range), azimuth, mid(camera.radius_range), mid(camera.fovy_range), size, size
    )


@torch.no_grad()
def prior_foreground(prior, prompt: str, config: SizeConfig, camera: CameraConfig, seed: int) -> float:
    """Mean foreground share of the prior's images of ``prompt`` round the ring."""
    cams = ring(config, camera, prior.image_size)
    prompts = [view_prompt(prompt, v) for v in view_names(cams.elevation, cams.azimuth, PromptConfig())]
    images = sample_images(prior, prompts, config.sample_steps, prior.sample_guidance_scale, seed)
    return float(foreground_share(images.float().cpu()))


@torch.no_grad()
def size_factor(scene: GaussianScene, target: float, config: SizeConfig, camera: CameraConfig, size: int,
                backend: str = "auto") -> float:  # fmt: skip
    """The scale that makes the scene's white-background ring renders cover ``target`` of the frame
    (areas grow with the square of the scale), clamped to [1 / max_factor, max_factor]."""
    cams = ring(config, camera, size).to(scene.device)
    ours = float(foreground_share(render(scene, cams, 1.0, backend=backend).images))
    if ours <= 0:
        return 1.0
    return min(config.max_factor, max(1 / config.max_factor, math.sqrt(target / ours)))
