"""Sampling a prior in 2D: DDIM with classifier-free guidance (diffusers' scheduler).

`splat3d prior sample "a red cube" --model M` shows what a prior makes of a
prompt before anyone spends time distilling it into 3D.
"""

from __future__ import annotations

import torch
from torch import Tensor

from splat3d.errors import Splat3dError


@torch.no_grad()
def check_sampling(
    prompts: list[str], steps: int, eta: float | None, camera_guidance_scale: float | None = None
) -> None:
    """Reject what sample_images cannot do, in one sentence, before any model is loaded."""
    if not prompts or any(not p.strip() for p in prompts):
        raise Splat3dError('The prompt is empty; describe what to draw, e.g. "a red cube".')
    if not 1 <= steps <= 1000:
        raise Splat3dError(f"--steps must be 1..1000, not {steps}.")
    if eta is not None and not 0.0 <= eta <= 1.0:
        raise Splat3dError(f"--eta must be between 0 and 1, not {eta}.")
    if camera_guidance_scale is not None and camera_guidance_scale < 0:
        raise Splat3dError(f"--camera-guidance-scale must be 0 or more, not {camera_guidance_scale}.")


# The camera a prior that takes cameras is given for a prompt's view phrase in 2D: the middle of the prompt
# processor's range for that view, at the evaluator's ring elevation for the rest (degrees: elevation, azimuth).
VIEW_CAMERAS = {"front": (15.0, 0.0), "side": (15.0, 90.0), "back": (15.0, 180.0), "overhead": (75.0, 0.0)}


def orbit_c2w(elevation: Tensor, azimuth: Tensor) -> Tensor:
    """Flattened camera-to-world matrices [N, 16] of orbit cameras looking at the origin (degrees; a camera
    prior reads only their direction, so radius, field of view and size are placeholders)."""
    from splat3d.render.cameras import orbit_cameras

    return orbit_cameras(elevation, azimuth, 3.0, 40.0, 8, 8).c2w.reshape(-1, 16)


def view_cameras(prompts: list[str]) -> Tensor:
    """Flattened camera-to-world matrices [N, 16] for the prompts' view phrases (VIEW_CAMERAS); zeros (no
    camera) for a prompt without one."""
    from splat3d.distill.prompts import split_view

    out = torch.zeros(len(prompts), 16)
    for i, prompt in enumerate(prompts):
        view = split_view(prompt)[1]
        if view is not None:
            out[i] = orbit_c2w(*(torch.tensor([v]) for v in VIEW_CAMERAS[view]))[0]
    return out


def sample_images(
    prior,
    prompts: list[str],
    steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    negative_prompt: str = "",
    progress=None,
    eta: float | None = None,
    view_guidance_scale: float | None = None,
    cameras: Tensor | None = None,
    camera_guidance_scale: float | None = None,
) -> Tensor:
    """Images [N, 3, H, W] in [0, 1], one per prompt.

    eta is DDIM's stochasticity (0: deterministic DDIM, 1: DDPM's variance); None takes what the prior
    recommends (`prior.sample_eta`). The timestep spacing comes from the prior's scheduler config.

    view_guidance_scale s_v guides the view phrase apart from the object (compositional CFG, as in
    Composable Diffusion): for "a red house, front view" (v) and its plain prompt "a red house" (p),
    eps = eps(neg) + s (eps(p) - eps(neg)) + s_v (eps(v) - eps(p)). With s_v = s this is plain CFG on v; a
    small prior's view conditioning is weak next to its object conditioning, and a larger s_v makes the
    asked view come out without pushing colours and kinds further. None takes what the prior recommends
    (`prior.sample_view_guidance_scale`; None there: plain CFG).

    cameras [N, 16] (flattened camera-to-world): what a prior that takes cameras is given, one per prompt
    (default: each prompt's view phrase's camera, VIEW_CAMERAS); ignored by other priors.

    camera_guidance_scale s_c guides such a prior's camera apart from the prompt: with c the prompt under its
    camera and c0 the prompt with no camera, (s_c - s) (eps(c) - eps(c0)) is added to the guided eps, so that
    without a view scale eps = eps(neg) + s (eps(c0) - eps(neg)) + s_c (eps(c) - eps(c0)). None (or s): plain
    CFG, every branch under the camera.
    """
    from diffusers import DDIMScheduler

    from splat3d.distill.prompts import split_view

    check_sampling(prompts, steps, eta, camera_guidance_scale)
    eta = prior.sample_eta if eta is None else eta
    if view_guidance_scale is None:
        view_guidance_scale = prior.sample_view_guidance_scale
    if view_guidance_scale == guidance_scale:
        view_guidance_scale = None  # the same sum: keep plain CFG's cheaper batch
    scheduler = DDIMScheduler.from_config(prior.scheduler.config)
    scheduler.set_timesteps(steps)
    n = len(prompts)
    size = int(prior.unet.config.sample_size)
    channels = int(prior.unet.config.in_channels)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, channels, size, size, generator=g, dtype=prior.compute_dtype).to(prior.device)
    z = z * scheduler.init_noise_sigma
    texts = [prompts, [negative_prompt] * n]
    if view_guidance_scale is not None:
        texts.append([split_view(p)[0] for p in prompts])  # prompts without a view phrase: their own plain
    # A prior that takes cameras gets the prompt's view as a camera, in every branch alike (but the camera-free
    # one that camera guidance adds: zero matrices are "no camera").
    camera_guided = prior.camera_conditioned and camera_guidance_scale not in (None, guidance_scale)
    if camera_guided:
        texts.append(prompts)
    text = torch.cat([prior.encode_text(x) for x in texts])
    if prior.camera_conditioned:
        cameras = (view_cameras(prompts) if cameras is None else cameras).to(prior.device)
        cameras = torch.cat([cameras] * (len(texts) - camera_guided) + [torch.zeros_like(cameras)] * camera_guided)
    else:
        cameras = None
    for t in scheduler.timesteps:
        t_batch = t.to(prior.device).expand(len(texts) * n)
        out = prior.unet_output(torch.cat([z] * len(texts)), t_batch, text, cameras).chunk(len(texts))
        # CFG on the raw output is the same for epsilon and v prediction (both are linear in it).
        if view_guidance_scale is None:
            guided = out[1] + guidance_scale * (out[0] - out[1])
        else:
            guided = out[1] + guidance_scale * (out[2] - out[1]) + view_guidance_scale * (out[0] - out[2])
        if camera_guided:
            guided = guided + (camera_guidance_scale - guidance_scale) * (out[0] - out[-1])
        z = scheduler.step(guided, t, z, eta=eta, generator=g).prev_sample
        if progress:
            progress()
    return prior.decode(z)
