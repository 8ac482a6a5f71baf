"""What every score-distillation method shares, and the registry that names them.

- GuidanceConfig: the knobs of all methods (each preset sets what it needs).
- The timestep range and its annealing; w(t) = 1 - abar_t.
- Classifier-free guidance of the frozen ("pretrained") branch.
- The target trick: a loss whose gradient w.r.t. z is exactly grad / B.
- The random draws of one step, in one fixed order.
- Guidance: the interface (images, cameras, step) -> loss and logs, and the
  per-step preparation all methods share; ``register`` and ``make_guidance``.

The VSD family's LoRA score model is in lora.py. See
../shared/design/L2VSD.md (in the repository's shared notes) for the
algorithms; threestudio's stable_diffusion_vsd_guidance for the details the
paper leaves open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from splat3d.distill.prompts import PromptProcessor
from splat3d.errors import Splat3dError
from splat3d.render.cameras import Cameras


@dataclass
class GuidanceConfig:
    """Settings of the score-distillation methods."""

    guidance_scale: float = 7.5
    """CFG scale of the pretrained branch (SDS uses ~100, the VSD family 7.5)."""
    min_step_percent: float = 0.02
    """Smallest timestep, as a fraction of the prior's T."""
    max_step_percent: float = 0.98
    """Largest timestep, as a fraction of T, before annealing."""
    max_step_percent_annealed: float = 0.5
    """Largest timestep after annealing."""
    anneal_start_step: int | None = None
    """Step at which the largest timestep starts to fall; None keeps it fixed."""
    anneal_end_step: int | None = None
    """Step at which it reaches max_step_percent_annealed (default: start + 1)."""
    lora_rank: int = 4
    """Rank of the LoRA on to_q, to_k, to_v, to_out.0 of every attention layer."""
    lora_lr: float = 1e-4
    """AdamW learning rate of the LoRA and camera embedding."""
    camera_condition_drop: float = 0.1
    """Fraction of LoRA training samples whose camera is zeroed."""
    lookahead_scale: float = 1.0
    """L2-VSD's eta: the lookahead direction is -eta * grad of the LoRA loss (1.0: the method benchmark's pick)."""
    linear_term: str = "exact"
    """L2-VSD's linear term: exact (forward-mode jvp), last_layer, finite_difference."""
    finite_difference_step: float = 0.1
    """h in (eps(phi + h dphi) - eps(phi)) / h for linear_term=finite_difference."""
    perp_neg_side: float = 0.0
    """Perp-Neg against the Janus problem: weight of the front-view prompt as a perpendicular negative on
    side views (0: off; threestudio's weight at 90° is 1.57). Needs prompt.view_dependent."""
    perp_neg_back: float = 0.0
    """The same on back views (0: off; threestudio's weight at 180° is 1.97)."""
    view_guidance_scale: float | None = None
    """CFG scale of the view phrase apart from the object (compositional CFG, see pretrained_eps): a small
    prior's view conditioning is weak next to its object conditioning; a larger scale makes each view look
    like the view it is. None: the same as guidance_scale, plain CFG. Needs prompt.view_dependent."""
    latent_gradient: str = "decoded"
    """How a latent prior's gradient reaches the renders. decoded: the target latent z - grad is decoded and
    the loss is taken in pixels, ||x - D(z - grad)||² (an image-space target, as HiFA's, Zhu et al. 2023);
    encoder: backpropagate grad through the VAE encoder (the chain rule, as threestudio does with Stable
    Diffusion). The built-in prior's small encoder turns the chain rule into off-colour speckle: "a green
    cube", cpu default, seed 0: encoder prompt acc 0.33, colour err 0.241, speckle 0.98 (a brown cube);
    decoded 1.00, 0.039, 0.000 (docs/shapes.md). Pixel priors ignore it."""
    decoded_pull: float = 1.0
    """latent_gradient=decoded: the pixel target is x + (D(z - grad) - D(z)) + p (D(z) - x). p = 1 is D(z - grad)
    itself (one decoder pass); below 1 the pull toward the VAE's reconstruction D(z) of the render, which
    cleans off-colour speckle but also rounds shapes off, is weakened (two decoder passes)."""
    prior_camera_scale: float | None = None
    """CFG scale of the camera apart from the prompt in the frozen prior, for a prior that takes cameras (the
    camera-token prior, docs/shapes.md): (s_c - s) (eps(prompt, camera) - eps(prompt, no camera)) is added to
    its guided eps, so eps = eps_u + s (eps(prompt, no camera) - eps_u) + s_c (eps(prompt, camera) - eps(prompt,
    no camera)), a compositional CFG as view_guidance_scale is for the view phrase. None (or guidance_scale):
    plain CFG, the camera in every branch. Costs one more UNet row per image. Priors without cameras ignore it."""
    camera_guidance_scale: float = 1.0
    """VSD family: eps_phi = eps_phi(no camera) + s (eps_phi(camera) - eps_phi(no camera)). 1: off, plain
    VSD; below 1 mixes in the camera-free score, ESD's entropy term (Wang et al. 2023)."""
    seed: int = 0
    """Seed of the guidance's own random draws (timesteps, noise, camera drop)."""

    def __post_init__(self):
        if self.linear_term not in ("exact", "last_layer", "finite_difference"):
            raise Splat3dError(
                f"Unknown linear term {self.linear_term!r}; choose exact, last_layer or finite_difference."
            )
        if self.latent_gradient not in ("decoded", "encoder"):
            raise Splat3dError(f"Unknown latent gradient {self.latent_gradient!r}; choose decoded or encoder.")
        if not 0.0 <= self.decoded_pull <= 1.0:
            raise Splat3dError("guidance.decoded_pull is a weight from 0 to 1 (1: the decoded target itself).")
        if self.view_guidance_scale is not None and self.view_guidance_scale < 0:
            raise Splat3dError("guidance.view_guidance_scale must be 0 or more (or null: the same as guidance_scale).")
        if self.perp_neg_side < 0 or self.perp_neg_back < 0:
            raise Splat3dError("guidance.perp_neg_side and perp_neg_back are weights of 0 (off) or more.")
        combined = self.perp_neg_side or self.perp_neg_back or self.view_guidance_scale is not None
        if self.prior_camera_scale is not None and (self.prior_camera_scale < 0 or combined):
            raise Splat3dError(
                "guidance.prior_camera_scale must be 0 or more, and is not combined with Perp-Neg or "
                "view_guidance_scale; set those off (0 and null) or prior_camera_scale to null."
            )
        if self.camera_guidance_scale != 1.0 and self.camera_condition_drop <= 0:
            raise Splat3dError(
                "guidance.camera_guidance_scale needs a camera-free score, which the LoRA learns only from "
                "dropped cameras; set guidance.camera_condition_drop above 0 (e.g. 0.1)."
            )


# --------------------------------------------------------------- timesteps
def timestep_bounds(config: GuidanceConfig, step: int, num_train_timesteps: int) -> tuple[int, int]:
    """Inclusive [lo, hi] timestep range at ``step``, with linear annealing of hi."""
    hi_frac = config.max_step_percent
    if config.anneal_start_step is not None and step >= config.anneal_start_step:
        end = config.anneal_end_step or config.anneal_start_step + 1
        frac = min(1.0, (step - config.anneal_start_step) / max(1, end - config.anneal_start_step))
        hi_frac = config.max_step_percent + frac * (config.max_step_percent_annealed - config.max_step_percent)
    lo = int(num_train_timesteps * config.min_step_percent)
    hi = max(lo, int(num_train_timesteps * hi_frac))
    return lo, min(hi, num_train_timesteps - 1)


def weighting(prior, t: Tensor) -> Tensor:
    """w(t) = 1 - abar_t, shaped [B, 1, 1, 1]."""
    return (1.0 - prior.alphas_cumprod[t]).reshape(-1, 1, 1, 1)


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    return eps_uncond + scale * (eps_cond - eps_uncond)


def perpendicular(x: Tensor, y: Tensor) -> Tensor:
    """The part of each x[i] perpendicular to y[i] (flattened per sample)."""
    dims = tuple(range(1, x.ndim))
    along = (x * y).sum(dims, keepdim=True) / y.square().sum(dims, keepdim=True).clamp_min(1e-20)
    return x - along * y


def target_loss(z: Tensor, grad: Tensor) -> Tensor:
    """0.5 ||z - sg(z - grad)||² / B: its gradient w.r.t. z is exactly grad / B."""
    grad = torch.nan_to_num(grad.detach())
    target = (z - grad).detach()
    return 0.5 * ((z - target) ** 2).sum() / z.shape[0]


@torch.no_grad()
def pretrained_eps(
    prior, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, scale: float,
    negative: Tensor | None = None, negative_weight: Tensor | None = None,
    plain: Tensor | None = None, view_scale: float | None = None, camera: Tensor | None = None,
    camera_scale: float | None = None,
) -> Tensor:  # fmt: skip
    """The frozen prior's noise prediction with CFG (adapters and the LoRA's camera off).

    With ``negative`` [B, L, D] and ``negative_weight`` [B] it is Perp-Neg (Armandpour et al. 2023, as
    threestudio applies it to 3D): of the negative prompt's guidance direction only the part perpendicular
    to the positive one is pushed away from, so the negative cannot cancel the prompt itself:

        eps = eps_u + s (e_pos - w perp(e_neg, e_pos)),   e_x = eps_x - eps_u.

    With ``plain`` (the prompt without its view phrase) and ``view_scale`` s_v, the view phrase gets its own
    scale (compositional CFG, Liu et al. 2022): e_pos = e_plain + (s_v / s) (eps_cond - eps_plain), so
    eps = eps_u + s e_plain + s_v (eps_cond - eps_plain); s_v = s is plain CFG.

    Only rows with a non-zero weight pay for Perp-Neg's extra prediction; without any, and without a view
    scale, the call is plain CFG.

    ``camera`` [B, 16] (flattened camera-to-world) reaches a prior whose UNet takes the camera, in every
    branch alike (the unconditional one too, as MVDream guides); other priors ignore it. With ``camera_scale``
    s_c (plain CFG only; GuidanceConfig refuses the other combinations) the prompt is also predicted with no
    camera (c0, zero matrices) and (s_c - s) (eps_cond - eps_c0) is added: the camera guided apart.
    """
    if view_scale is not None and plain is not None and view_scale != scale:
        return _composed_eps(prior, x_t, t, cond, uncond, scale, negative, negative_weight, plain, view_scale, camera)
    if negative_weight is None or not bool(negative_weight.any()):
        # Exactly the plain CFG batch: concatenating even an empty extra row changed the batch's memory
        # layout and with it the kernels' rounding (tests/test_pinned_outputs.py caught it).
        guided_camera = camera is not None and prior.camera_conditioned and camera_scale not in (None, scale)
        k = 3 if guided_camera else 2
        x2, t2 = torch.cat([x_t] * k), torch.cat([t] * k)
        texts = [cond, uncond] + [cond] * guided_camera
        cams = None if camera is None else torch.cat([camera, camera] + [torch.zeros_like(camera)] * guided_camera)
        eps = prior.to_epsilon(prior.unet_output(x2, t2, torch.cat(texts), cams), x2, t2).chunk(k)
        guided = classifier_free_guidance(eps[1], eps[0], scale)
        return guided + (camera_scale - scale) * (eps[0] - eps[2]) if guided_camera else guided
    b = x_t.shape[0]
    rows = negative_weight.nonzero()[:, 0].to(x_t.device)
    x, tt = torch.cat([x_t, x_t, x_t[rows]]), torch.cat([t, t, t[rows]])
    cams = None if camera is None else torch.cat([camera, camera, camera[rows]])
    eps = prior.to_epsilon(prior.unet_output(x, tt, torch.cat([cond, uncond, negative[rows]]), cams), x, tt)
    eps_cond, eps_uncond, eps_negative = eps[:b], eps[b : 2 * b], eps[2 * b :]
    e_pos = eps_cond - eps_uncond
    push = negative_weight.to(e_pos)[rows].reshape(-1, 1, 1, 1)
    e_pos = e_pos.index_add(0, rows, -push * perpendicular(eps_negative - eps_uncond[rows], e_pos[rows]))
    return eps_uncond + scale * e_pos


def _composed_eps(prior, x_t, t, cond, uncond, scale, negative, negative_weight, plain, view_scale, camera) -> Tensor:
    """pretrained_eps with a view scale: one batch of cond, uncond, plain (and Perp-Neg's rows)."""
    b = x_t.shape[0]
    rows = (
        negative_weight.nonzero()[:, 0].to(x_t.device)
        if negative_weight is not None
        else torch.zeros(0, dtype=torch.long, device=x_t.device)
    )
    texts = [cond, uncond, plain] + ([negative[rows]] if len(rows) else [])
    x, tt = torch.cat([x_t] * 3 + [x_t[rows]]), torch.cat([t] * 3 + [t[rows]])
    cams = None if camera is None else torch.cat([camera] * 3 + [camera[rows]])
    eps = prior.to_epsilon(prior.unet_output(x, tt, torch.cat(texts), cams), x, tt)
    eps_cond, eps_uncond, eps_plain = eps[:b], eps[b : 2 * b], eps[2 * b : 3 * b]
    e_pos = (eps_plain - eps_uncond) + (view_scale / scale) * (eps_cond - eps_plain)
    if len(rows):
        push = negative_weight.to(e_pos)[rows].reshape(-1, 1, 1, 1)
        e_neg = eps[3 * b :] - eps_uncond[rows]
        e_pos = e_pos.index_add(0, rows, -push * perpendicular(e_neg, e_pos[rows]))
    return eps_uncond + scale * e_pos


# ----------------------------------------------------------- random draws
@dataclass
class NoiseDraw:
    """The random numbers of one step, drawn in one fixed order."""

    t: Tensor  # [B] timesteps for the image gradient
    noise: Tensor  # like z
    t_lora: Tensor | None = None  # [B] timesteps for the LoRA loss, uniform in [0, T)
    noise_lora: Tensor | None = None
    camera_keep: Tensor | None = None  # [B, 1] 0 where the camera is dropped


def draw_noise(
    generator: torch.Generator, z: Tensor, bounds: tuple[int, int], num_train_timesteps: int,
    camera_drop: float | None = None,
) -> NoiseDraw:  # fmt: skip
    """Draw on the CPU generator (reproducible and checkpointable), then move."""
    b, dev = z.shape[0], z.device
    t = torch.randint(bounds[0], bounds[1] + 1, (b,), generator=generator)
    noise = torch.randn(z.shape, generator=generator)
    draw = NoiseDraw(t=t.to(dev), noise=noise.to(dev))
    if camera_drop is not None:
        draw.t_lora = torch.randint(0, num_train_timesteps, (b,), generator=generator).to(dev)
        draw.noise_lora = torch.randn(z.shape, generator=generator).to(dev)
        draw.camera_keep = (torch.rand(b, 1, generator=generator) >= camera_drop).float().to(dev)
    return draw


# -------------------------------------------------------------- interface
@dataclass
class GuidanceOutput:
    loss: Tensor  # scalar; backward() carries the guidance gradient to the images
    logs: dict = field(default_factory=dict)


@dataclass
class StepInputs:
    """What every method computes first, from the renders and cameras."""

    z: Tensor  # renders in the prior's space, with grad
    draw: NoiseDraw
    x_t: Tensor  # noised detached z
    eps_pretrained: Tensor  # CFG prediction of the frozen prior
    text: Tensor  # the plain prompt's embedding (LoRA branch)
    camera: Tensor  # [B, 16] flattened camera-to-world
    pixels: Tensor | None = None  # renders at the prior's size, with grad, when the loss is in pixels (decoded)


class Guidance:
    """Base class: ``guidance(images, cameras, step) -> GuidanceOutput``.

    images are renders [B, 3, H, W] in [0, 1]; the returned loss's gradient
    w.r.t. them is the method's score-distillation gradient. Methods with a
    LoRA update it inside the call.
    """

    name: str = "base"
    uses_lora: bool = False
    score = None  # the VSD family's LoRAScoreModel (lora.py); None for SDS

    def __init__(self, prior, prompt: PromptProcessor, config: GuidanceConfig | None = None):
        self.prior = prior
        self.prompt = prompt
        self.config = config or GuidanceConfig()
        self.generator = torch.Generator().manual_seed(self.config.seed)

    def __call__(self, images: Tensor, cameras: Cameras, step: int) -> GuidanceOutput:
        raise NotImplementedError

    def prepare(self, images: Tensor, cameras: Cameras, step: int) -> StepInputs:
        prior, cfg = self.prior, self.config
        assert images.ndim == 4 and images.shape[1] == 3, f"images must be [B, 3, H, W], got {tuple(images.shape)}"
        assert len(cameras) == images.shape[0], "one camera per image"
        pixels = None
        if prior.vae is not None and cfg.latent_gradient == "decoded":
            # The gradient goes to the renders through a decoded target (output()), never through the encoder.
            pixels = prior.resize_images(images)
            with torch.no_grad():
                z = prior.encode_images(pixels)
        else:
            z = prior.encode_images(images)
        bounds = timestep_bounds(cfg, step, prior.num_train_timesteps)
        draw = draw_noise(
            self.generator, z, bounds, prior.num_train_timesteps,
            camera_drop=cfg.camera_condition_drop if self.uses_lora else None,
        )  # fmt: skip
        x_t = prior.add_noise(z.detach(), draw.noise, draw.t)
        elevation, azimuth = cameras.angles()
        b = z.shape[0]
        negative = weight = None
        if cfg.perp_neg_side or cfg.perp_neg_back:
            # Perp-Neg: side and back views push away from the front's description.
            by_view = {"side": cfg.perp_neg_side, "back": cfg.perp_neg_back}
            weight = torch.tensor([by_view.get(v, 0.0) for v in self.prompt.views(elevation, azimuth)])
            negative = self.prompt.view("front", b)
        camera = cameras.c2w.reshape(b, 16).to(prior.device, prior.compute_dtype)
        eps_pre = pretrained_eps(
            prior, x_t, draw.t, self.prompt.conditional(elevation, azimuth), self.prompt.unconditional(b),
            cfg.guidance_scale, negative, weight, self.prompt.plain(b), cfg.view_guidance_scale, camera,
            cfg.prior_camera_scale,
        )  # fmt: skip
        return StepInputs(z, draw, x_t, eps_pre, self.prompt.plain(b), camera, pixels)

    def output(self, inputs: StepInputs, eps_target: Tensor, **logs) -> GuidanceOutput:
        """Turn w(t) (eps_pretrained - eps_target) into the target-trick loss."""
        grad = weighting(self.prior, inputs.draw.t) * (inputs.eps_pretrained - eps_target)
        grad = torch.nan_to_num(grad)
        if inputs.pixels is None:
            loss = target_loss(inputs.z, grad)
        else:
            # Image-space target from the decoded latent the step asks for (see decoded_pull); d loss / dx = x - target.
            x, z, pull = inputs.pixels.detach(), inputs.z.detach(), self.config.decoded_pull
            if pull == 1.0:
                target = self.prior.decode(z - grad, clamp=False).to(x.dtype)
            else:
                now, asked = self.prior.decode(torch.cat([z, z - grad]), clamp=False).to(x.dtype).chunk(2)
                target = x + (asked - now) + pull * (now - x)
            loss = target_loss(inputs.pixels, x - target)
        logs = {"grad_norm": grad.norm().item(), "t": inputs.draw.t.float().mean().item(), **logs}
        return GuidanceOutput(loss, logs)

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything that changes during a run (never the frozen prior)."""
        return {"method": self.name, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        assert state["method"] == self.name, f"state is for {state['method']!r}, not {self.name!r}"
        self.generator.set_state(state["generator"])


# --------------------------------------------------------------- registry
REGISTRY: dict[str, type[Guidance]] = {}


def register(name: str):
    """Class decorator: ``@register("l2vsd")`` makes a method available by name."""

    def wrap(cls: type[Guidance]) -> type[Guidance]:
        assert name not in REGISTRY, f"guidance {name!r} is registered twice"
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def make_guidance(name: str, prior, prompt, config: GuidanceConfig | None = None) -> Guidance:
    if name not in REGISTRY:
        raise Splat3dError(f"Unknown method {name!r}; choose one of {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name](prior, prompt, config)
