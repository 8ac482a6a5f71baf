"""Sampling a prior in 2D: DDIM with classifier-free guidance (diffusers' scheduler).

`splat3d prior sample "a red cube" --model M` shows what a prior makes of a
prompt before anyone spends time distilling it into 3D.
"""

from __future__ import annotations

import torch
from torch import Tensor

from splat3d.errors import Splat3dError


@torch.no_grad()
def check_sampling(prompts: list[str], steps: int, eta: float | None) -> None:
    """Reject what sample_images cannot do, in one sentence, before any model is loaded."""
    if not prompts or any(not p.strip() for p in prompts):
        raise Splat3dError('The prompt is empty; describe what to draw, e.g. "a red cube".')
    if not 1 <= steps <= 1000:
        raise Splat3dError(f"--steps must be 1..1000, not {steps}.")
    if eta is not None and not 0.0 <= eta <= 1.0:
        raise Splat3dError(f"--eta must be between 0 and 1, not {eta}.")


def sample_images(
    prior,
    prompts: list[str],
    steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    negative_prompt: str = "",
    progress=None,
    eta: float | None = None,
) -> Tensor:
    """Images [N, 3, H, W] in [0, 1], one per prompt.

    eta is DDIM's stochasticity (0: deterministic DDIM, 1: DDPM's variance); None takes what the prior
    recommends (`prior.sample_eta`). The timestep spacing comes from the prior's scheduler config.
    """
    from diffusers import DDIMScheduler

    check_sampling(prompts, steps, eta)
    eta = prior.sample_eta if eta is None else eta
    scheduler = DDIMScheduler.from_config(prior.scheduler.config)
    scheduler.set_timesteps(steps)
    n = len(prompts)
    size = int(prior.unet.config.sample_size)
    channels = int(prior.unet.config.in_channels)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, channels, size, size, generator=g, dtype=prior.compute_dtype).to(prior.device)
    z = z * scheduler.init_noise_sigma
    text = torch.cat([prior.encode_text(prompts), prior.encode_text([negative_prompt] * n)])
    for t in scheduler.timesteps:
        t_batch = t.to(prior.device).expand(2 * n)
        out = prior.unet_output(torch.cat([z, z]), t_batch, text)
        cond, uncond = out.chunk(2)
        # CFG on the raw output is the same for epsilon and v prediction (both are linear in it).
        z = scheduler.step(uncond + guidance_scale * (cond - uncond), t, z, eta=eta, generator=g).prev_sample
        if progress:
            progress()
    return prior.decode(z)
