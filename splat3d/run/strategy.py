"""Densify/prune with gsplat.strategy, used as is, behind one small object.

``Densifier`` holds a gsplat strategy (DefaultStrategy or MCMCStrategy), its
state dict, and the two hooks around the backward pass; its ``state_dict``
goes into checkpoints. Only MCMCStrategy needs help on CPU: two of its helpers
call CUDA kernels (``quat_scale_to_covar_preci`` and the relocation kernel
``compute_relocation``). For CPU scenes, torch versions of exactly those two
are swapped into gsplat.strategy.ops for the duration of the MCMC hook and
put back after; everything else is gsplat's own code.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from splat3d.errors import Splat3dError
from splat3d.scene.gaussians import sh0_to_rgb


@dataclass
class StrategyConfig:
    """Densify/prune through gsplat.strategy."""

    kind: str = "default"
    """default (gsplat DefaultStrategy) or mcmc (MCMCStrategy)."""
    refine_start: int = 100
    refine_stop: int = 750
    """Last densify/prune step (75% of the default 1000 steps, as GaussianDreamer)."""
    refine_every: int = 100
    reset_every: int = 0
    """gsplat's opacity-reset interval (default strategy); 0: never. gsplat also prunes large splats
    (prune_scale3d) only after step reset_every. Note: gsplat 1.5.3 never performs the reset itself
    (strategy/default.py: ``step % self.reset_every == 0 & step > 0`` is always false), so with it this
    value only sets when large-splat pruning starts."""
    prune_opa: float = 0.01
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_scale3d: float = 0.1
    cap_max: int = 20000
    """Most Gaussians the MCMC strategy grows to."""
    cleanup_every: int = 0
    """From refine_stop on, every this many steps and after the last one, remove the Gaussians that
    stay semi-transparent or carry a colour no neighbour shares (see cleanup_mask); 0: never."""
    cleanup_opacity: float = 0.5
    """Gaussians below this opacity at a cleanup are removed: they only haze the surface."""
    cleanup_colour: float = 0.25
    """Two colours are "shared" when no channel differs by more than this (the evaluator's speckle
    threshold)."""
    cleanup_neighbours: int = 8
    """A Gaussian sharing its colour with fewer than 2 of its this many nearest neighbours is an
    isolated dot (speckle) and is removed; coherent details (a door, a window) keep theirs."""

    def __post_init__(self):
        if self.kind not in ("default", "mcmc"):
            raise Splat3dError(f"Unknown strategy {self.kind!r}; choose default or mcmc.")
        if self.reset_every < 0 or self.refine_every <= 0:
            raise Splat3dError("strategy.reset_every must be 0 (never) or positive, and refine_every positive.")
        if self.cleanup_every < 0 or self.cleanup_neighbours < 2:
            raise Splat3dError(
                "strategy.cleanup_every must be 0 (never) or positive, and cleanup_neighbours at least 2."
            )


@torch.no_grad()
def cleanup_mask(means: Tensor, opacities: Tensor, rgb: Tensor, cfg: StrategyConfig, chunk: int = 2048) -> Tensor:
    """Gaussians to remove: semi-transparent ones (opacity below cfg.cleanup_opacity) and isolated
    colours, those whose colour fewer than 2 of their cfg.cleanup_neighbours nearest neighbours share.

    Written here because no library offers it: gsplat prunes by opacity and size only, and a
    low-opacity prune alone keeps the opaque off-colour dots that read as speckle.
    """
    k = min(cfg.cleanup_neighbours, len(means) - 1)
    isolated = torch.zeros(len(means), dtype=torch.bool, device=means.device)
    if k >= 2:
        for start in range(0, len(means), chunk):  # [chunk, N] distances at a time, not [N, N]
            rows = slice(start, start + chunk)
            d = torch.cdist(means[rows], means)
            d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = float("inf")  # not oneself
            near = d.topk(k, largest=False).indices
            shared = ((rgb[near] - rgb[rows, None]).abs().amax(-1) <= cfg.cleanup_colour).sum(-1)
            isolated[rows] = shared < 2
    return isolated | (opacities < cfg.cleanup_opacity)


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


@contextmanager
def torch_mcmc_helpers():
    """gsplat's MCMC ops pointed at the torch helpers (for CPU scenes), inside this block only."""
    import gsplat.strategy.ops as ops

    saved = ops.compute_relocation, ops.quat_scale_to_covar_preci
    ops.compute_relocation, ops.quat_scale_to_covar_preci = compute_relocation_torch, _quat_scale_to_covar_preci_torch
    try:
        yield
    finally:
        ops.compute_relocation, ops.quat_scale_to_covar_preci = saved


NEVER = 2**31 - 1  # a reset interval no run reaches (gsplat has no "off" switch)


def make_strategy(cfg: StrategyConfig):
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    if cfg.kind == "mcmc":
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
        reset_every=cfg.reset_every or NEVER,
        refine_every=cfg.refine_every,
        verbose=False,
    )


class Densifier:
    """A gsplat strategy with its state: hooks before and after the backward pass, and a state dict.

    The hooks take the scene's parameters and their optimisers by name, as
    gsplat's strategies do; they swap tensors and moments when they densify.
    """

    def __init__(self, config: StrategyConfig, params: dict, optimizers: dict, scene_scale: float,
                 device: torch.device):  # fmt: skip
        from gsplat.strategy import DefaultStrategy, MCMCStrategy

        self.config = config
        self.strategy = make_strategy(config)
        self.mcmc = isinstance(self.strategy, MCMCStrategy)
        self.device = device
        self.strategy.check_sanity(params, optimizers)
        if isinstance(self.strategy, DefaultStrategy):
            self.state = self.strategy.initialize_state(scene_scale=scene_scale)
        else:
            self.state = self.strategy.initialize_state()

    def step_pre_backward(self, params: dict, optimizers: dict, step: int, info: dict) -> None:
        self.strategy.step_pre_backward(params, optimizers, self.state, step, info)

    def step_post_backward(self, params: dict, optimizers: dict, step: int, info: dict, means_lr: float) -> None:
        """The two strategies take different extras (MCMC scales its position noise by the means lr)."""
        if not self.mcmc:
            self.strategy.step_post_backward(params, optimizers, self.state, step, info, packed=True)
        elif self.device.type == "cuda":
            self.strategy.step_post_backward(params, optimizers, self.state, step, info, lr=means_lr)
        else:
            with torch_mcmc_helpers():
                self.strategy.step_post_backward(params, optimizers, self.state, step, info, lr=means_lr)

    def cleanup(self, params: dict, optimizers: dict, step: int, total_steps: int) -> int:
        """After step ``step`` (0-based) of ``total_steps``: remove what cleanup_mask finds, if this is a
        cleanup step; through gsplat's own remove op, so optimiser moments and strategy state follow.
        Returns how many Gaussians went."""
        from gsplat.strategy.ops import remove

        cfg, done = self.config, step + 1
        due = (
            cfg.cleanup_every
            and done >= cfg.refine_stop
            and ((done - cfg.refine_stop) % cfg.cleanup_every == 0 or done == total_steps)
        )
        if not due:
            return 0
        rgb = sh0_to_rgb(params["sh0"][:, 0])  # the view-independent colour
        mask = cleanup_mask(params["means"], torch.sigmoid(params["opacities"]), rgb, cfg)
        if mask.all():  # never empty a scene: a later step could not bring it back
            mask = torch.zeros_like(mask)
        if mask.any():
            # Per-Gaussian state only (MCMC's state also holds a binomial table, which must stay whole).
            per_gaussian = {k: v for k, v in self.state.items() if torch.is_tensor(v) and len(v) == len(mask)}
            remove(params, optimizers, per_gaussian, mask)
            self.state.update(per_gaussian)
        return int(mask.sum())

    def state_dict(self) -> dict:
        return {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.state = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in state.items()}
