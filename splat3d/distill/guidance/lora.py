"""The VSD family's score model of the current renders, eps_phi.

A peft LoRA on the prior's own UNet plus a zero-initialised camera
embedding, with its AdamW optimiser; forward-mode AD gives its prediction and
the Jacobian-vector product that L2-VSD's linear term needs in one pass.
``LoRAGuidance`` is the base class of the methods that carry one.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from splat3d.distill.guidance.base import Guidance, GuidanceConfig, NoiseDraw
from splat3d.distill.priors import camera_mode

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_ADAPTER = "splat3d_lora"


def _group_norm_decomposed(input, num_groups, weight=None, bias=None, eps=1e-5):
    """F.group_norm from elementary ops. PyTorch's forward-AD formula for
    native_group_norm views the tangent and fails when it is not contiguous
    (it is not, after some of the UNet's concatenations). Statistics in float32
    at least, as the native kernel keeps them: squares of float16 activations
    overflow."""
    n, c = input.shape[:2]
    x = input.reshape(n, num_groups, -1).to(torch.promote_types(input.dtype, torch.float32))
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    x = ((x - mean) * torch.rsqrt(var + eps)).reshape(input.shape).to(input.dtype)
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


class _CameraSum(torch.nn.Module):
    """The class embedding inside the LoRA branch of a prior whose UNet takes the camera itself: the prior's
    own camera embedding (frozen) plus the LoRA's, on labels [B, CAMERA_FEATURES + 16] = (the prior's camera
    features, the flattened camera-to-world matrix)."""

    def __init__(self, prior_embedding: torch.nn.Module, lora_embedding: torch.nn.Module, split: int):
        super().__init__()
        self.prior, self.lora, self.split = prior_embedding, lora_embedding, split

    def forward(self, labels: Tensor) -> Tensor:
        own = self.prior(labels[:, : self.split].to(self.prior.linear_1.weight.dtype))
        return own.to(labels.dtype) + self.lora(labels[:, self.split :])


class LoRAScoreModel:
    """eps_phi: the prior's UNet with a LoRA and a camera embedding switched on.

    One UNet is shared with the pretrained branch: outside ``lora_branch()``
    the adapters are disabled and the camera embedding is detached, so the
    frozen prior's predictions never change.
    """

    def __init__(self, prior, rank: int = 4, lr: float = 1e-4, seed: int = 0, camera_scale: float = 1.0):
        from peft import LoraConfig

        unet = prior.unet
        # A prior that takes the camera itself keeps its own camera embedding; the LoRA's adds to it.
        self.prior_embedding = getattr(unet, "class_embedding", None)
        assert self.prior_embedding is None or camera_mode(unet.config) == "embedding", "the UNet has a class embedding"
        assert not getattr(unet, "_hf_peft_config_loaded", False), "the prior's UNet already carries an adapter"
        self.prior = prior
        self.camera_scale = camera_scale
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
        self.branch_embedding = self.camera_embedding
        prefix = "class_embedding."
        if self.prior_embedding is not None:
            from splat3d.distill.priors import CAMERA_FEATURES

            self.branch_embedding = _CameraSum(self.prior_embedding, self.camera_embedding, CAMERA_FEATURES)
            prefix = "class_embedding.lora."
        for name, p in self.camera_embedding.named_parameters():
            self.params[prefix + name] = p
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=lr)

    @contextmanager
    def lora_branch(self):
        unet = self.prior.unet
        unet.enable_adapters()
        # peft's disable_adapters() also turns requires_grad off; turn it back on.
        for p in self.params.values():
            p.requires_grad_(True)
        unet.class_embedding = self.branch_embedding
        try:
            yield
        finally:
            unet.class_embedding = self.prior_embedding
            unet.disable_adapters()

    def _camera_kwargs(self, camera: Tensor) -> dict:
        """The UNet's camera arguments inside the branch for cameras [B, 16] (zero rows: dropped cameras): the
        LoRA's own embedding takes the matrix as class labels, and a prior that takes the camera gets it its way
        (its class embedding's features first, or its attention tokens)."""
        camera = camera.to(self.param_dtype)
        prior = self.prior.camera_kwargs(camera, len(camera))
        if self.prior_embedding is None:
            return {**prior, "class_labels": camera}
        return {"class_labels": torch.cat([prior["class_labels"].to(self.param_dtype), camera], dim=1)}

    # ------------------------------------------------------------ forward
    def _call(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor, params: dict | None = None) -> Tensor:
        """eps_phi, with classifier-free guidance on the camera when camera_scale is not 1 (ESD): the
        camera-free prediction is the one with a zero camera, as the LoRA learns it from dropped cameras."""
        s = self.camera_scale
        if s == 1.0:
            return self._predict(x_t, t, text, camera, params)
        b = x_t.shape[0]
        eps = self._predict(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, text]),
            torch.cat([camera, torch.zeros_like(camera)]), params,
        )  # fmt: skip
        with_camera, without = eps[:b], eps[b:]
        return without + s * (with_camera - without)

    def _predict(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor, params: dict | None) -> Tensor:
        prior = self.prior
        args = (x_t.to(prior.dtype), t)
        kwargs = dict(encoder_hidden_states=text.to(prior.dtype), **self._camera_kwargs(camera))
        # A half-precision prior on CUDA runs its LoRA branch under autocast: there
        # forward-mode AD otherwise hands float32 activations to half weights.
        half_cuda = prior.device.type == "cuda" and prior.dtype in (torch.float16, torch.bfloat16)
        with torch.autocast("cuda", dtype=prior.dtype, enabled=half_cuda):
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

    def eps_and_jvp(
        self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor, direction: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """eps_phi(x_t) and J_phi eps_phi(x_t) · direction in one forward-mode pass.

        ``direction`` maps parameter names (a subset of ``params``) to tangents;
        parameters it leaves out carry none.
        """
        with self.lora_branch(), forward_ad_kernels(), fwAD.dual_level():
            duals = {n: fwAD.make_dual(self.params[n].detach(), d) for n, d in direction.items()}
            out = fwAD.unpack_dual(self._call(x_t, t, text, camera, duals))
            tangent = out.tangent if out.tangent is not None else torch.zeros_like(out.primal)
            return out.primal, tangent

    @torch.no_grad()
    def eps_and_finite_difference(
        self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor, direction: dict[str, Tensor], h: float
    ) -> tuple[Tensor, Tensor]:
        """eps_phi(x_t) and (eps_{phi + h d}(x_t) - eps_phi(x_t)) / h: two ordinary forwards."""
        with self.lora_branch(), forward_ad_kernels():
            eps = self._call(x_t, t, text, camera)
            shifted = {n: self.params[n] + h * d for n, d in direction.items()}
            return eps, (self._call(x_t, t, text, camera, shifted) - eps) / h

    # ----------------------------------------------------------- training
    def loss(self, z: Tensor, draw: NoiseDraw, text: Tensor, camera: Tensor) -> Tensor:
        """L_lora: the denoising loss on the (detached) renders, own t' and noise.

        Call inside ``lora_branch()``.
        """
        z = z.detach()
        x_t = self.prior.add_noise(z, draw.noise_lora, draw.t_lora)
        target = self.prior.training_target(z, draw.noise_lora, draw.t_lora)
        camera = camera * draw.camera_keep
        out = self.prior.unet(
            x_t.to(self.prior.dtype),
            draw.t_lora,
            encoder_hidden_states=text.to(self.prior.dtype),
            **self._camera_kwargs(camera),
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


class LoRAGuidance(Guidance):
    """A method of the VSD family: the base preparation plus a LoRA score model of the renders."""

    uses_lora = True

    def __init__(self, prior, prompt, config: GuidanceConfig | None = None):
        super().__init__(prior, prompt, config)
        cfg = self.config
        self.score = LoRAScoreModel(prior, cfg.lora_rank, cfg.lora_lr, cfg.seed, cfg.camera_guidance_scale)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "score": self.score.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.score.load_state_dict(state["score"])
