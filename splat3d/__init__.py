"""splat3d: text-to-3D Gaussian splatting by score distillation."""

__version__ = "0.1.0"
