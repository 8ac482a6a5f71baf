"""render(scene, cameras, background) with a CUDA (gsplat) or CPU (torch) backend.

Both backends return gsplat's ``info`` dict in packed form, so
``gsplat.strategy`` (call its hooks with ``packed=True``) densifies the same
way on CPU and GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from splat3d.render import raster_torch
from splat3d.render.cameras import Cameras
from splat3d.scene import GaussianScene

Backend = Literal["auto", "gsplat", "torch"]
BACKENDS = ("auto", "gsplat", "torch")


@dataclass
class RenderOutput:
    images: Tensor  # [C, 3, H, W], background composited
    alphas: Tensor  # [C, 1, H, W]
    depths: Tensor | None  # [C, 1, H, W] alpha-weighted depth, if asked
    info: dict  # gsplat's info (packed): means2d, radii, gaussian_ids, ...


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    from splat3d.errors import Splat3dError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise Splat3dError("--device cuda was asked for but no CUDA GPU is available; use --device cpu.")
    if name not in ("cpu", "cuda"):
        raise Splat3dError(f"Unknown device {name!r}; use auto, cpu or cuda.")
    return torch.device(name)


def resolve_backend(backend: Backend, device: torch.device) -> str:
    from splat3d.errors import Splat3dError

    if backend not in BACKENDS:
        raise Splat3dError(f"Unknown rasterizer backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise Splat3dError("The gsplat backend needs a CUDA device; use backend torch (or auto) on CPU.")
    return backend


def _background_tensor(
    background: Union[Tensor, tuple, list, float, None], n_cameras: int, like: Tensor
) -> Tensor | None:
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.ndim == 0:
        bg = bg.expand(3)
    return bg.expand(n_cameras, 3) if bg.ndim == 1 else bg


def render(
    scene: GaussianScene,
    cameras: Cameras,
    background: Union[Tensor, tuple, list, float, None] = (1.0, 1.0, 1.0),
    *,
    backend: Backend = "auto",
    sh_degree: int | None = None,
    with_depth: bool = False,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> RenderOutput:
    """Render ``scene`` from each camera.

    Args:
        scene: the Gaussians (raw parameters; activations are applied here).
        cameras: C cameras of one size, on the scene's device.
        background: RGB in [0, 1]: a scalar, [3], or [C, 3]; None for none.
        backend: "gsplat" (CUDA kernels), "torch" (pure PyTorch, any device)
            or "auto" (gsplat on CUDA, torch otherwise).
        sh_degree: SH degree to evaluate; defaults to the scene's.
        with_depth: also return the alpha-weighted depth.
        near_plane, far_plane: depth culling, as gsplat.
        eps2d: the low-pass added to every projected covariance, in pixels².

    Returns:
        RenderOutput with images [C, 3, H, W], alphas [C, 1, H, W], depths
        [C, 1, H, W] or None, and gsplat's info dict in packed form.
    """
    backend = resolve_backend(backend, scene.device)
    degree = scene.sh_degree if sh_degree is None else sh_degree
    assert 0 <= degree <= scene.sh_degree, f"sh_degree {degree} exceeds the scene's {scene.sh_degree}"
    viewmats = cameras.viewmats.to(scene.device, scene.dtype)
    Ks = cameras.Ks.to(scene.device, scene.dtype)
    bg = _background_tensor(background, len(cameras), scene.means)
    args = dict(
        means=scene.means,
        quats=scene.params["quats"],
        scales=scene.scales,
        opacities=scene.opacities,
        viewmats=viewmats,
        Ks=Ks,
        width=cameras.width,
        height=cameras.height,
        sh_degree=degree,
        backgrounds=bg,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
    )
    coeffs = scene.sh_coeffs[:, : (degree + 1) ** 2]
    if backend == "torch":
        colors, alphas, depths, info = raster_torch.rasterize(sh_coeffs=coeffs, with_depth=with_depth, **args)
    else:
        colors, alphas, depths, info = _render_gsplat(coeffs, with_depth, **args)
    return RenderOutput(
        images=colors.permute(0, 3, 1, 2),
        alphas=alphas.permute(0, 3, 1, 2),
        depths=None if depths is None else depths.permute(0, 3, 1, 2),
        info=info,
    )


def _render_gsplat(coeffs: Tensor, with_depth: bool, backgrounds: Optional[Tensor] = None, **args):
    from gsplat import rasterization

    colors, alphas, info = rasterization(
        colors=coeffs,
        packed=True,
        render_mode="RGB+D" if with_depth else "RGB",
        **args,
    )
    info["packed"] = True
    depths = colors[..., 3:4] if with_depth else None
    colors = colors[..., :3]
    # gsplat 1.5.3's packed mode rejects per-view backgrounds (its shape check
    # expects [3] there), so the background is composited here, as gsplat does:
    # C + (1 - alpha) * background.
    if backgrounds is not None:
        colors = colors + (1.0 - alphas) * backgrounds[:, None, None, :]
    return colors, alphas, depths, info
