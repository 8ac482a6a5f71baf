"""A prior shaped like Stable Diffusion 2.1-base, with random weights: for benchmarks and tests only.

Time and memory of score distillation depend on the networks' architecture,
not on their weight values, and no weights can be downloaded here. So the
UNet2DConditionModel, AutoencoderKL and CLIP text encoder are built from SD
2.1-base's published configs (benchmarks/sd21_base/) and initialised at
random. Its outputs are noise; each step costs exactly what the real model's
does. It is never offered as a user model (``--model``).

``reduced=True`` keeps the structure (four UNet levels with cross-attention on
64x64 latents, an 8x VAE, a 77-token text context) at a small width, so CPU
tests can run a whole step in seconds.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch

CONFIGS = Path(__file__).resolve().parent / "sd21_base"
# SD 2.1-base's parameter counts (the published safetensors hold exactly these).
PARAMETERS = {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}
WORDS = ("a", "corgi", "red", "cube", "front", "side", "back", "overhead", "view", "of")
CONTEXT = 77  # SD's text context (tokens)


def load_configs(reduced: bool = False) -> dict[str, dict]:
    """The four configs as dicts; reduced: the same structure at a small width."""
    configs = {
        name: json.loads((CONFIGS / name / "config.json").read_text()) for name in ("unet", "vae", "text_encoder")
    }
    configs["scheduler"] = json.loads((CONFIGS / "scheduler" / "scheduler_config.json").read_text())
    if reduced:
        configs = copy.deepcopy(configs)
        configs["unet"].update(
            block_out_channels=[32, 64, 64, 64],
            attention_head_dim=[1, 1, 2, 2],
            cross_attention_dim=64,
            layers_per_block=1,
            norm_num_groups=16,
        )
        configs["vae"].update(block_out_channels=[16, 16, 32, 32], layers_per_block=1, norm_num_groups=8)
        configs["text_encoder"].update(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2
        )
    return configs


def build_modules(
    device: Union[str, torch.device] = "meta",
    dtype: torch.dtype = torch.float32,
    reduced: bool = False,
    seed: int = 0,
    vocab_size: Optional[int] = None,
) -> dict[str, torch.nn.Module]:
    """unet, vae and text_encoder, initialised at random directly on ``device`` ("meta": shapes only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = load_configs(reduced)
    text_config = {k: v for k, v in configs["text_encoder"].items() if k != "architectures"}
    if vocab_size is not None:
        text_config["vocab_size"] = vocab_size
    torch.manual_seed(seed)
    with torch.device(device):
        modules = {
            "unet": UNet2DConditionModel.from_config(configs["unet"]),
            "vae": AutoencoderKL.from_config(configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**text_config)),
        }
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # diffusers warns about any .to(dtype) on a fresh model
    try:
        for module in modules.values():
            module.to(dtype).requires_grad_(False).eval()
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return modules


def parameter_counts(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}


def _tokenizer(folder: Path):
    from splat3d.distill.priors.tiny import build_clip_tokenizer

    return build_clip_tokenizer(folder, WORDS, max_length=CONTEXT)


def make_sd_shaped_prior(
    device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None, reduced: bool = False, seed: int = 0
):
    """A DiffusionPrior with SD 2.1-base's architecture and random weights, built in memory on ``device``."""
    from diffusers import DDPMScheduler

    from splat3d.distill.priors import DiffusionPrior

    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp))
    modules = build_modules(device, dtype, reduced, seed, vocab_size=len(tokenizer) if reduced else None)
    scheduler = DDPMScheduler.from_config(load_configs(reduced)["scheduler"])
    return DiffusionPrior(
        name="sd21-base-shaped (random weights)",
        tokenizer=tokenizer,
        text_encoder=modules["text_encoder"],
        unet=modules["unet"],
        scheduler=scheduler,
        vae=modules["vae"],
        prediction_type=scheduler.config.prediction_type,
        device=device,
        dtype=dtype,
    )


def save_sd_shaped_prior(
    folder: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    reduced: bool = False,
    seed: int = 0,
) -> Path:
    """Write the random SD-shaped prior in the diffusers layout, for `splat3d generate --model FOLDER`."""
    from diffusers import DDPMScheduler

    folder = Path(folder)
    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    tokenizer = _tokenizer(folder / "tokenizer")
    modules = build_modules(device, dtype, reduced, seed, vocab_size=len(tokenizer) if reduced else None)
    for name, module in modules.items():
        module.save_pretrained(folder / name)
    DDPMScheduler.from_config(load_configs(reduced)["scheduler"]).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "splat3d": {"note": "SD 2.1-base architecture with random weights: for benchmarks only"},
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


if __name__ == "__main__":
    counts = parameter_counts(build_modules("meta"))
    for name, n in counts.items():
        print(f"{name:13s} {n:>13,d}  (SD 2.1-base: {PARAMETERS[name]:,d})")
