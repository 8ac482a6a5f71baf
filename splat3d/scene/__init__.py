"""Gaussian scenes: the parameters, PLY I/O, export formats and the scene's extent."""

from splat3d.scene.gaussians import PARAM_NAMES, GaussianScene

__all__ = ["PARAM_NAMES", "GaussianScene"]
