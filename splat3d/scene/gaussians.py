"""GaussianScene: the parameters of a 3D Gaussian splat scene.

Parameters are stored raw (pre-activation) in a ``torch.nn.ParameterDict``
under gsplat's names, so ``gsplat.strategy`` can densify and prune them in
place:

    means      [N, 3]     world positions
    scales     [N, 3]     log standard deviations
    quats      [N, 4]     rotations, wxyz, unnormalised
    opacities  [N]        logits
    sh0        [N, 1, 3]  degree-0 SH coefficients
    shN        [N, K, 3]  higher SH coefficients, K = (degree + 1)**2 - 1

The scene owns no optimiser. Always read parameters through ``params`` (or the
properties), never keep references: a strategy swaps them for new tensors.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_from_rest(k: int) -> int:
    """SH degree for K higher-order coefficients per channel; -1 if K is invalid."""
    for degree in range(4):
        if num_sh_bases(degree) - 1 == k:
            return degree
    return -1


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


class GaussianScene:
    """A set of 3D Gaussians with SH colour, stored as raw parameters."""

    def __init__(
        self,
        means: Tensor,
        scales: Tensor,
        quats: Tensor,
        opacities: Tensor,
        sh0: Tensor,
        shN: Tensor | None = None,
    ):
        n = means.shape[0]
        if shN is None:
            shN = means.new_zeros(n, 0, 3)
        assert means.shape == (n, 3), f"means must be [N, 3], got {tuple(means.shape)}"
        assert scales.shape == (n, 3), f"scales must be [N, 3], got {tuple(scales.shape)}"
        assert quats.shape == (n, 4), f"quats must be [N, 4], got {tuple(quats.shape)}"
        assert opacities.shape == (n,), f"opacities must be [N], got {tuple(opacities.shape)}"
        assert sh0.shape == (n, 1, 3), f"sh0 must be [N, 1, 3], got {tuple(sh0.shape)}"
        assert shN.ndim == 3 and shN.shape[0] == n and shN.shape[2] == 3, (
            f"shN must be [N, K, 3], got {tuple(shN.shape)}"
        )
        assert sh_degree_from_rest(shN.shape[1]) >= 0, (
            f"shN has {shN.shape[1]} coefficients per channel; expected 0, 3, 8 or 15"
        )
        self.params = torch.nn.ParameterDict(
            {
                name: torch.nn.Parameter(t.detach().clone())
                for name, t in zip(PARAM_NAMES, (means, scales, quats, opacities, sh0, shN))
            }
        )

    # ----------------------------------------------------------------- shape
    def __len__(self) -> int:
        return self.params["means"].shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_rest(self.params["shN"].shape[1])

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params["means"].dtype

    # ----------------------------------------------------------- activations
    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def scales(self) -> Tensor:
        """Standard deviations along the local axes, exp(log-scales)."""
        return torch.exp(self.params["scales"])

    @property
    def quats(self) -> Tensor:
        """Unit quaternions, wxyz."""
        return torch.nn.functional.normalize(self.params["quats"], dim=-1)

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.params["opacities"])

    @property
    def sh_coeffs(self) -> Tensor:
        """All SH coefficients [N, (degree+1)**2, 3]."""
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    @property
    def base_colors(self) -> Tensor:
        """View-independent RGB from the degree-0 term, [N, 3]."""
        return sh0_to_rgb(self.params["sh0"][:, 0])

    # ------------------------------------------------------------- movement
    def to(self, device=None, dtype: torch.dtype | None = None) -> GaussianScene:
        """A copy on ``device`` with floating ``dtype`` (parameters stay leaves)."""
        return GaussianScene(*(self.params[k].detach().to(device=device, dtype=dtype) for k in PARAM_NAMES))

    def clone(self) -> GaussianScene:
        return self.to()

    def raw(self) -> dict[str, Tensor]:
        """Detached raw parameters, as saved in PLY files and checkpoints."""
        return {k: self.params[k].detach() for k in PARAM_NAMES}

    def with_sh_degree(self, degree: int) -> GaussianScene:
        """A copy whose shN is truncated or zero-padded to ``degree``."""
        assert 0 <= degree <= 3, f"SH degree must be 0..3, got {degree}"
        raw = self.raw()
        k = num_sh_bases(degree) - 1
        shN = raw["shN"][:, :k]
        if shN.shape[1] < k:
            pad = shN.new_zeros(len(self), k - shN.shape[1], 3)
            shN = torch.cat([shN, pad], dim=1)
        raw["shN"] = shN
        return GaussianScene(**raw)

    # ------------------------------------------------------- initialisation
    @classmethod
    def random_ball(
        cls,
        count: int,
        radius: float = 1.0,
        opacity: float = 0.1,
        color: Union[Sequence[float], Tensor, None] = (0.5, 0.5, 0.5),
        sh_degree: int = 0,
        scale: float | None = None,
        generator: torch.Generator | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> GaussianScene:
        """Gaussians uniform in a ball of ``radius`` around the origin.

        ``scale`` defaults to the radius of the volume each Gaussian owns
        (``radius / count**(1/3)``), so the ball starts evenly covered.
        ``color`` is one RGB in [0, 1] for all; ``None`` draws random colours.
        """
        assert count > 0, f"count must be positive, got {count}"
        assert 0.0 < opacity < 1.0, f"opacity must be in (0, 1), got {opacity}"
        kw = dict(generator=generator, dtype=dtype)
        directions = torch.nn.functional.normalize(torch.randn(count, 3, **kw), dim=-1)
        radii = radius * torch.rand(count, 1, **kw) ** (1.0 / 3.0)
        means = directions * radii
        if scale is None:
            scale = radius / count ** (1.0 / 3.0)
        scales = torch.full((count, 3), math.log(scale), dtype=dtype)
        quats = torch.zeros(count, 4, dtype=dtype)
        quats[:, 0] = 1.0
        opacities = torch.full((count,), math.log(opacity / (1.0 - opacity)), dtype=dtype)
        if color is None:
            rgb = torch.rand(count, 3, **kw)
        else:
            rgb = torch.as_tensor(color, dtype=dtype).expand(count, 3)
        sh0 = rgb_to_sh0(rgb)[:, None, :]
        shN = torch.zeros(count, num_sh_bases(sh_degree) - 1, 3, dtype=dtype)
        scene = cls(means, scales, quats, opacities, sh0, shN)
        return scene.to(device=device) if device is not None else scene

    def __repr__(self) -> str:
        return f"GaussianScene(n={len(self)}, sh_degree={self.sh_degree}, device={self.device})"
