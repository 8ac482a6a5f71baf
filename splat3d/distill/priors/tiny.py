"""Small random priors built from configs, saved in the diffusers layout.

Tests and benchmarks use them: nothing is downloaded. They exercise every
code path of a real prior (tokenizer, CLIP text encoder, cross-attention
UNet, optional VAE, epsilon or v prediction) at a fraction of the cost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Literal, Union

import torch

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte -> printable character table (as in openai/CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_clip_tokenizer(folder: Union[str, Path], words: Iterable[str], max_length: int = 16):
    """A CLIPTokenizer whose vocabulary holds every byte plus ``words`` as whole tokens.

    CLIP's BPE files cannot be downloaded here, so we write our own: the 256
    byte symbols (alone and word-final), then merges that build each listed
    word into one token. Any other text still tokenizes, character by character.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for token in [*symbols, *(s + "</w>" for s in symbols)]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in dict.fromkeys(w.lower() for w in words):
        if len(word) < 2 or not word.isalpha():
            continue
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        merged = parts[0]
        for part in parts[1:]:
            rule = f"{merged} {part}"
            merged += part
            if rule not in merges:
                merges.append(rule)
            vocab.setdefault(merged, len(vocab))
    for token in SPECIAL:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_tiny_prior(
    folder: Union[str, Path],
    kind: Literal["pixel", "latent"] = "pixel",
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
    sample_size: int = 16,
    words: Iterable[str] = (
        "a",
        "red",
        "blue",
        "green",
        "cube",
        "sphere",
        "front",
        "side",
        "back",
        "overhead",
        "view",
    ),
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (32, 64),
    camera: bool | str = False,
) -> Path:
    """Write a random prior in the diffusers layout to ``folder`` and return it.

    Pixel priors work at ``sample_size`` pixels; latent priors have a VAE with
    a downsampling factor of 4, so renders are ``4 * sample_size`` pixels.
    ``camera``: the UNet also takes the camera (splat3d.distill.priors.camera_features), as the shapes
    prior trained with camera_condition does: True through its time embedding, "tokens" as cross-attention
    tokens.
    """
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from splat3d.distill.priors import CAMERA_TOKENS_CONFIG, CAMERA_UNET_CONFIG

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(folder / "tokenizer", words)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    CLIPTextModel(text_config).save_pretrained(folder / "text_encoder")
    channels = 3 if kind == "pixel" else 4
    tokens = {**CAMERA_TOKENS_CONFIG, "encoder_hid_dim": 32}
    camera_config = {"tokens": tokens, True: CAMERA_UNET_CONFIG}.get(camera, {})
    n_blocks = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        # No attention at the highest resolution: it dominates CPU cost.
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_blocks - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_blocks - 1) + ("UpBlock2D",),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
        **camera_config,
    )
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
    ).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline" if kind == "latent" else "Splat3dPixelPrior",
        "_diffusers_version": __import__("diffusers").__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "vae": [None, None],
    }
    if kind == "latent":
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=4 * sample_size,
        ).save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder
