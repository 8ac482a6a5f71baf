"""Pieces every score-distillation method shares.

- GuidanceConfig: the knobs of all methods (each preset sets what it needs).
- The timestep range and its annealing; w(t) = 1 - abar_t.
- Classifier-free guidance of the frozen ("pretrained") branch.
- The target trick: a loss whose gradient w.r.t. z is exactly grad / B.
- LoRAScoreModel: the VSD family's score model of the current renders: a
  peft LoRA on the prior's own UNet plus a zero-initialised camera embedding,
  with its AdamW optimiser, and the lookahead's linear term.
- Guidance: the interface (images, cameras, step) -> loss and logs, and the
  per-step preparation all methods share.

See ../shared/design/L2VSD.md (in the repository's shared notes) for the
algorithms; threestudio's stable_diffusion_vsd_guidance for the details the
paper leaves open.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from splat3d.distill.prompts import PromptProcessor
from splat3d.render.cameras import Cameras

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_ADAPTER = "splat3d_lora"


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
    seed: int = 0
    """Seed of the guidance's own random draws (timesteps, noise, camera drop)."""


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


def target_loss(z: Tensor, grad: Tensor) -> Tensor:
    """0.5 ||z - sg(z - grad)||² / B: its gradient w.r.t. z is exactly grad / B."""
    grad = torch.nan_to_num(grad.detach())
    target = (z - grad).detach()
    return 0.5 * ((z - target) ** 2).sum() / z.shape[0]


@torch.no_grad()
def pretrained_eps(prior, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """The frozen prior's noise prediction with CFG (adapters and camera off)."""
    x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
    eps = prior.to_epsilon(prior.unet_output(x2, t2, torch.cat([cond, uncond])), x2, t2)
    eps_cond, eps_uncond = eps.chunk(2)
    return classifier_free_guidance(eps_uncond, eps_cond, scale)


def _group_norm_decomposed(input, num_groups, weight=None, bias=None, eps=1e-5):
    """F.group_norm from elementary ops. PyTorch's forward-AD formula for
    native_group_norm views the tangent and fails when it is not contiguous
    (it is not, after some of the UNet's concatenations)."""
    n, c = input.shape[:2]
    x = input.reshape(n, num_groups, -1)
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    x = ((x - mean) * torch.rsqrt(var + eps)).reshape(input.shape)
    shape = (1, c) + (1,) * (input.ndim - 2)
    if weight is not None:
        x = x * weight.reshape(shape)
    if bias is not None:
        x = x + bias.reshape(shape)
    return x


@contextmanager
def forward_ad_kernels():
    """Kernels forward-mode AD can differentiate: PyTorch's math SDPA (the fused
    CPU attention has no forward-AD formula) and a decomposed group norm.

    Every LoRA-branch prediction that feeds the image gradient runs under it,
    so VSD and L2-VSD at eta = 0 use the very same kernels and agree exactly.
    """
    original = torch.nn.functional.group_norm
    torch.nn.functional.group_norm = _group_norm_decomposed
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.nn.functional.group_norm = original


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


# --------------------------------------------------------- LoRA score model
class LoRAScoreModel:
    """eps_phi: the prior's UNet with a LoRA and a camera embedding switched on.

    One UNet is shared with the pretrained branch: outside ``lora_branch()``
    the adapters are disabled and the camera embedding is detached, so the
    frozen prior's predictions never change.
    """

    def __init__(self, prior, rank: int = 4, lr: float = 1e-4, seed: int = 0):
        from peft import LoraConfig

        unet = prior.unet
        assert getattr(unet, "class_embedding", None) is None, "the prior's UNet already has a class embedding"
        assert not getattr(unet, "_hf_peft_config_loaded", False), "the prior's UNet already carries an adapter"
        self.prior = prior
        # Trainable parameters never in half precision (peft casts activations to them).
        self.param_dtype = torch.promote_types(prior.dtype, torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet.add_adapter(
                LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS),
                adapter_name=LORA_ADAPTER,
            )
            time_dim = unet.time_embedding.linear_2.out_features
            # The flattened camera-to-world matrix, added to the time embedding.
            self.camera_embedding = torch.nn.Sequential(
                torch.nn.Linear(16, time_dim), torch.nn.SiLU(), torch.nn.Linear(time_dim, time_dim)
            ).to(prior.device, self.param_dtype)
        torch.nn.init.zeros_(self.camera_embedding[2].weight)
        torch.nn.init.zeros_(self.camera_embedding[2].bias)
        unet.disable_adapters()
        # Named as the UNet sees them inside lora_branch(), for functional_call.
        self.params: dict[str, torch.nn.Parameter] = {}
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.data = p.data.to(self.param_dtype)
                p.requires_grad_(True)
                self.params[name] = p
        for name, p in self.camera_embedding.named_parameters():
            self.params[f"class_embedding.{name}"] = p
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=lr)

    @contextmanager
    def lora_branch(self):
        unet = self.prior.unet
        unet.enable_adapters()
        # peft's disable_adapters() also turns requires_grad off; turn it back on.
        for p in self.params.values():
            p.requires_grad_(True)
        unet.class_embedding = self.camera_embedding
        try:
            yield
        finally:
            unet.class_embedding = None
            unet.disable_adapters()

    def last_layer_names(self) -> list[str]:
        """LoRA parameters of the last attention layer that carries one."""
        lora = [n for n in self.params if "lora_" in n]
        last_attention = lora[-1].split(".to_")[0]
        return [n for n in lora if n.startswith(last_attention + ".")]

    # ------------------------------------------------------------ forward
    def _call(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor, params: dict | None = None) -> Tensor:
        prior = self.prior
        args = (x_t.to(prior.dtype), t)
        kwargs = dict(encoder_hidden_states=text.to(prior.dtype), class_labels=camera.to(self.param_dtype))
        if params is None:
            out = prior.unet(*args, **kwargs).sample
        else:
            out = torch.func.functional_call(prior.unet, params, args, kwargs, strict=False).sample
        return prior.to_epsilon(out.to(self.param_dtype), x_t, t)

    @torch.no_grad()
    def eps(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor) -> Tensor:
        """eps_phi(x_t, t, y, c) at the current parameters."""
        with self.lora_branch(), forward_ad_kernels():
            return self._call(x_t, t, text, camera)

    def eps_and_linear_term(
        self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor, direction: dict[str, Tensor],
        variant: str = "exact", fd_step: float = 0.1,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """eps_phi(x_t) and J_phi eps_phi(x_t) · direction.

        exact: one forward-mode pass over the parameters in ``direction``
        gives both (primal and tangent). last_layer: the same, with the
        tangent on the last LoRA layer only. finite_difference:
        (eps_{phi + h d} - eps_phi) / h, one extra ordinary forward.
        """
        if variant == "last_layer":
            keep = set(self.last_layer_names())
            direction = {n: d for n, d in direction.items() if n in keep}
        with self.lora_branch(), forward_ad_kernels():
            if variant in ("exact", "last_layer"):
                with fwAD.dual_level():
                    duals = {n: fwAD.make_dual(self.params[n].detach(), d) for n, d in direction.items()}
                    out = fwAD.unpack_dual(self._call(x_t, t, text, camera, duals))
                    tangent = out.tangent if out.tangent is not None else torch.zeros_like(out.primal)
                    return out.primal, tangent
            assert variant == "finite_difference", f"unknown linear term {variant!r}"
            with torch.no_grad():
                eps = self._call(x_t, t, text, camera)
                shifted = {n: self.params[n] + fd_step * d for n, d in direction.items()}
                return eps, (self._call(x_t, t, text, camera, shifted) - eps) / fd_step

    # ----------------------------------------------------------- training
    def loss(self, z: Tensor, draw: NoiseDraw, text: Tensor, camera: Tensor) -> Tensor:
        """L_lora: the denoising loss on the (detached) renders, own t' and noise.

        Call inside ``lora_branch()``.
        """
        z = z.detach()
        x_t = self.prior.add_noise(z, draw.noise_lora, draw.t_lora)
        target = self.prior.training_target(z, draw.noise_lora, draw.t_lora)
        camera = (camera * draw.camera_keep).to(self.param_dtype)
        out = self.prior.unet(
            x_t.to(self.prior.dtype),
            draw.t_lora,
            encoder_hidden_states=text.to(self.prior.dtype),
            class_labels=camera,
        ).sample
        return torch.nn.functional.mse_loss(out.to(self.param_dtype), target)

    def compute_gradient(self, z: Tensor, draw: NoiseDraw, text: Tensor, camera: Tensor) -> float:
        """Backpropagate L_lora into the parameters' .grad; returns its value."""
        self.optimizer.zero_grad(set_to_none=True)
        # Backward inside the branch: peft's disable_adapters() switches
        # requires_grad off, and autograd then drops the LoRA's gradients.
        with self.lora_branch():
            loss = self.loss(z, draw, text, camera)
            loss.backward()
        return loss.item()

    def apply_gradient(self) -> None:
        """One AdamW step with the gradient in .grad."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_step(self, z: Tensor, draw: NoiseDraw, text: Tensor, camera: Tensor) -> float:
        loss = self.compute_gradient(z, draw, text, camera)
        self.apply_gradient()
        return loss

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        from peft.utils import get_peft_model_state_dict

        lora = get_peft_model_state_dict(self.prior.unet, adapter_name=LORA_ADAPTER)
        camera = self.camera_embedding.state_dict()
        return {
            "lora": {k: v.detach().clone() for k, v in lora.items()},
            "camera_embedding": {k: v.detach().clone() for k, v in camera.items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.prior.unet, state["lora"], adapter_name=LORA_ADAPTER)
        unexpected = getattr(result, "unexpected_keys", [])
        assert not unexpected, f"LoRA state has unexpected keys {unexpected[:3]}"
        self.camera_embedding.load_state_dict(state["camera_embedding"])
        self.optimizer.load_state_dict(state["optimizer"])


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


class Guidance:
    """Base class: ``guidance(images, cameras, step) -> GuidanceOutput``.

    images are renders [B, 3, H, W] in [0, 1]; the returned loss's gradient
    w.r.t. them is the method's score-distillation gradient. Methods with a
    LoRA update it inside the call.
    """

    name: str = "base"
    uses_lora: bool = False

    def __init__(self, prior, prompt: PromptProcessor, config: GuidanceConfig | None = None):
        self.prior = prior
        self.prompt = prompt
        self.config = config or GuidanceConfig()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.score = (
            LoRAScoreModel(prior, self.config.lora_rank, self.config.lora_lr, self.config.seed)
            if self.uses_lora
            else None
        )

    def __call__(self, images: Tensor, cameras: Cameras, step: int) -> GuidanceOutput:
        raise NotImplementedError

    def prepare(self, images: Tensor, cameras: Cameras, step: int) -> StepInputs:
        prior, cfg = self.prior, self.config
        assert images.ndim == 4 and images.shape[1] == 3, f"images must be [B, 3, H, W], got {tuple(images.shape)}"
        assert len(cameras) == images.shape[0], "one camera per image"
        z = prior.encode_images(images)
        bounds = timestep_bounds(cfg, step, prior.num_train_timesteps)
        draw = draw_noise(
            self.generator, z, bounds, prior.num_train_timesteps,
            camera_drop=cfg.camera_condition_drop if self.uses_lora else None,
        )  # fmt: skip
        x_t = prior.add_noise(z.detach(), draw.noise, draw.t)
        elevation, azimuth = cameras.angles()
        b = z.shape[0]
        eps_pre = pretrained_eps(
            prior, x_t, draw.t, self.prompt.conditional(elevation, azimuth), self.prompt.unconditional(b),
            cfg.guidance_scale,
        )  # fmt: skip
        camera = cameras.c2w.reshape(b, 16).to(prior.device, prior.compute_dtype)
        return StepInputs(z, draw, x_t, eps_pre, self.prompt.plain(b), camera)

    def output(self, inputs: StepInputs, eps_target: Tensor, **logs) -> GuidanceOutput:
        """Turn w(t) (eps_pretrained - eps_target) into the target-trick loss."""
        grad = weighting(self.prior, inputs.draw.t) * (inputs.eps_pretrained - eps_target)
        grad = torch.nan_to_num(grad)
        loss = target_loss(inputs.z, grad)
        logs = {"grad_norm": grad.norm().item(), "t": inputs.draw.t.float().mean().item(), **logs}
        return GuidanceOutput(loss, logs)

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything that changes during a run (never the frozen prior)."""
        state = {"method": self.name, "generator": self.generator.get_state()}
        if self.score is not None:
            state["score"] = self.score.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        assert state["method"] == self.name, f"state is for {state['method']!r}, not {self.name!r}"
        self.generator.set_state(state["generator"])
        if self.score is not None:
            self.score.load_state_dict(state["score"])
