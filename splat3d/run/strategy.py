"""Densify/prune with gsplat.strategy, used as is.

Only MCMCStrategy needs help on CPU: two of its helpers call CUDA kernels
(``quat_scale_to_covar_preci`` and the relocation kernel ``compute_relocation``).
We swap in torch versions of exactly those two, in gsplat.strategy.ops, when
the scene is not on CUDA; everything else is gsplat's own code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from splat3d.run.config import StrategyConfig


def compute_relocation_torch(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor):
    """Torch version of gsplat.relocation.compute_relocation (MCMC paper, Eq. 9).

    For a Gaussian split into n copies: o' = 1 - (1 - o)^(1/n) and
    s' = s * o / sum_{i=1..n} sum_{k=0..i-1} C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1).
    Evaluated in float64 (the alternating sum cancels badly in float32).
    """
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).long()
    o = opacities.double()
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n.double())
    # c[n, k] = sum_{i=k+1..n} C(i-1, k): the coefficient of o'^(k+1) for n copies.
    c = torch.cat([torch.zeros(1, n_max, dtype=torch.float64), torch.cumsum(binoms.double(), 0)])
    k = torch.arange(n_max, dtype=torch.float64)
    sign = torch.where(k.long() % 2 == 0, 1.0, -1.0).double()
    powers = new_o[:, None] ** (k + 1)  # [N, n_max]
    denom = (c[n] * sign * powers / torch.sqrt(k + 1)).sum(-1)
    new_scales = (o / denom)[:, None] * scales.double()
    return new_o.to(opacities.dtype), new_scales.to(scales.dtype)


def _quat_scale_to_covar_preci_torch(quats, scales, compute_covar=True, compute_preci=True, triu=False):
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    return _quat_scale_to_covar_preci(quats, scales, compute_covar, compute_preci, triu)


def use_torch_mcmc_helpers() -> None:
    """Point gsplat's MCMC ops at the torch helpers (for CPU scenes)."""
    import gsplat.strategy.ops as ops

    ops.compute_relocation = compute_relocation_torch
    ops.quat_scale_to_covar_preci = _quat_scale_to_covar_preci_torch


def make_strategy(cfg: StrategyConfig, device: torch.device):
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    if cfg.kind == "mcmc":
        if device.type != "cuda":
            use_torch_mcmc_helpers()
        return MCMCStrategy(
            cap_max=cfg.cap_max,
            refine_start_iter=cfg.refine_start,
            refine_stop_iter=cfg.refine_stop,
            refine_every=cfg.refine_every,
            verbose=False,
        )
    return DefaultStrategy(
        prune_opa=cfg.prune_opa,
        grow_grad2d=cfg.grow_grad2d,
        grow_scale3d=cfg.grow_scale3d,
        prune_scale3d=cfg.prune_scale3d,
        refine_start_iter=cfg.refine_start,
        refine_stop_iter=cfg.refine_stop,
        reset_every=cfg.reset_every,
        refine_every=cfg.refine_every,
        verbose=False,
    )


def initialize_state(strategy, scene_scale: float) -> dict:
    from gsplat.strategy import DefaultStrategy

    if isinstance(strategy, DefaultStrategy):
        return strategy.initialize_state(scene_scale=scene_scale)
    return strategy.initialize_state()


def step_post_backward(strategy, params, optimizers, state: dict, step: int, info: dict, means_lr: float) -> None:
    """The strategy's post-backward hook; the two strategies take different extras
    (MCMC scales its position noise by the means learning rate)."""
    from gsplat.strategy import MCMCStrategy

    if isinstance(strategy, MCMCStrategy):
        strategy.step_post_backward(params, optimizers, state, step, info, lr=means_lr)
    else:
        strategy.step_post_backward(params, optimizers, state, step, info, packed=True)
