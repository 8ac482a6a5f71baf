"""Cameras and rasterization: gsplat's CUDA kernels, or a torch rasterizer with the same math on CPU."""

from splat3d.render.rasterize import RenderOutput, render, resolve_device

__all__ = ["RenderOutput", "render", "resolve_device"]
