"""Training the built-in shapes prior from a seed (reproducible, resumable).

    splat3d prior train shapes --out DIR [--steps N] [--batch-size B]

1. Render the dataset once (cached): every (colour, kind) of the world from
   cameras drawn exactly like `generate`'s (the `cpu` preset's ranges), white
   background, captioned with the same view-dependent phrasing the prompt
   processor uses ("a red cube, side view"), some captions without a view.
2. Train a pixel-space UNet2DConditionModel (cross-attention off the highest
   resolution) jointly with a small CLIP text encoder on a word-level CLIP
   tokenizer: epsilon prediction, squaredcos_cap_v2 schedule, AdamW, 10%
   empty captions for classifier-free guidance, EMA weights for sampling.
3. Checkpoint every K steps (atomic, weights_only-safe) and resume from the
   last one; export the EMA weights as a diffusers folder (safetensors).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from splat3d.distill.priors import CAMERA_TOKENS_CONFIG, CAMERA_UNET_CONFIG, camera_features, camera_kwargs
from splat3d.distill.prompts import PromptConfig, split_view, view_names, view_prompt
from splat3d.errors import Splat3dError
from splat3d.render import render
from splat3d.render.cameras import CameraConfig, CameraSampler
from splat3d.run.checkpoint import list_checkpoints, load_newest_checkpoint, save_checkpoint, save_torch
from splat3d.run.config import build_config
from splat3d.shapes.world import COLOURS, DETAIL_RGB, FRONTED, KINDS, WORLD_VERSION, make_object, vocabulary

# The sampler this prior's 2D samples are judged best with (benchmarks/shapes_prior.py, 480 DDIM-50 samples of
# v2, every colour x kind x phrasing; docs/shapes.md). Colour and kind both right: CFG 1.5 0.971, 3 0.988, 5 0.994
# (eta 1); view asked = view seen on houses and mugs: 0.58 / 0.64 / 0.63 -- the view phrase is weak next to the
# object, and more CFG on the whole prompt does not fix it. Guiding the view phrase apart from the object
# (sample_images' view_guidance_scale) does: 24 house/mug samples per scale at CFG 3, view CFG 3 / 8 / 15:
# 0.50 / 0.69 / 0.83; over all 480 samples view CFG 15 lifts the view to 0.854 but costs kinds (both right 0.933:
# overhead mugs and cylinders blur together). The recommendation keeps the objects right (no view scale); ask
# for --view-guidance-scale to see views. (v1, 32 px, was best at CFG 1.5: more collapsed its kinds to cubes.)
SAMPLE_GUIDANCE_SCALE = 3.0
SAMPLE_VIEW_GUIDANCE_SCALE = None
# DDIM's eta for those samples. Stochastic DDIM (eta 1, DDPM's variance) corrects the small model's errors as it
# goes; deterministic DDIM (eta 0) cannot: v2 at CFG 3, both right 0.988 at eta 1, 0.971 at eta 0 (v1 alike).
SAMPLE_ETA = 1.0


@dataclass
class PriorTrainConfig:
    steps: int = 6500
    batch_size: int = 64
    lr: float = 3e-4
    resolution: int = 32
    views_per_object: int = 160
    colours: tuple = tuple(COLOURS)
    kinds: tuple = tuple(KINDS)
    block_out_channels: tuple = (32, 64, 64)
    cross_attention_dim: int = 64
    caption_dropout: float = 0.1
    plain_caption: float = 0.2
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    classifier_steps: int = 1500
    seed: int = 0
    weights_dtype: str = "float32"
    """How export stores the weights: float32, or float16 to halve the shipped size (loaded in the
    caller's dtype either way; training itself is float32)."""
    overhead_share: float = 0.0
    """Share of each object's views seen from overhead (elevation 62-88°, past the prompt
    processor's 60° threshold), which generate's cameras never reach."""
    latent: bool = False
    """Train an AutoencoderKL first (resolution -> resolution/4, 4 channels) and the UNet on its latents,
    as Stable Diffusion is built (the calibration in ../shared/design/SHAPES-PRIOR.md: a 64-px latent UNet
    step costs 0.4-0.9 s against 16 s in pixel space)."""
    vae_block_out_channels: tuple = (32, 64, 64)
    vae_latent_channels: int = 4
    """Channels of the latents (Stable Diffusion's 4 by default); the UNet takes and predicts as many."""
    vae_layers_per_block: int = 1
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_lr: float = 5e-4
    vae_kl_weight: float = 1e-6
    vae_detail_weight: float = 0.0
    """Extra weight of the reconstruction error on detail pixels (the door, windows and roof edge: pixels
    within 0.15 of DETAIL_RGB per channel, and their one-pixel rims): each counts 1 + this. The details cover
    3.6% of a 64-px house front's pixels, rims included, so plain L1 learns them last: version 2's autoencoder
    (1,500 steps) reads 0.903 of the true houses' ring views right after reconstruction and loses the blue and
    purple doors. Fresh autoencoders at 500 steps: 0 gives 0.806, 20 gives 0.986, and 1.000 at 1,500 steps
    (docs/shapes.md, "Weighting the door's pixels keeps the door")."""
    view_steps: int = 0
    """A last stage of UNet steps on view-weighted batches (after ``steps``): ``view_batch_share`` of each batch
    from the kinds with a front, their four views drawn equally often and always named in the caption (never
    plain). Version 2's main stage learnt the view phrase only weakly next to the object words (2D: the asked
    view seen in 0.635 of house and mug samples), since most captions of every kind describe the object alone."""
    view_batch_share: float = 0.5
    view_kinds: str = "fronted"
    """Which kinds the view stage's share of each batch draws from, with their view always named: "fronted"
    (the house and the mug only) or "all" (every kind equally often, each kind's views equally often), so the
    view phrase does not come to stand for the kinds with a front (what "fronted" did in 3D, docs/shapes.md).
    Through the stage the drawn kinds are never captioned plain, in any part of the batch (empty captions stay)."""
    view_fronted_weight: float = 1.0
    """With view_kinds "all": how much more often the view stage draws each kind with a front than each other
    kind (1: all equally)."""
    view_front_weight: float = 1.0
    """How much more often the view stage draws the front view of a kind with a front than each of its other
    views (1: its views equally often; the kind's share stays the same). The camera-token prior saw the house
    front least well (2D: 0.67 against backs 0.96) and its 3D houses showed no door (docs/shapes.md)."""
    camera_condition: bool = False
    """The UNet also takes the camera (MVDream's way: splat3d.distill.priors.camera_features through a diffusers
    "projection" class embedding, added to the time embedding; zero-initialised, so a prior started --from one
    without it begins exactly as that prior). Distillation gives it each render's camera. With it, the view
    stage teaches the view through the camera alone: the images it draws are captioned without a view phrase,
    so no phrase can come to stand for the kinds with a front."""
    camera_tokens: bool = False
    """With camera_condition: the camera enters as 10 extra cross-attention tokens (CAMERA_TOKENS_CONFIG, as
    Zero-1-to-3 appends the pose to the text) instead of through the time embedding, where a 1,200-step stage
    left the UNet deaf to it (docs/shapes.md). The tokens' projection starts at zero and the text's at the
    identity, so a prior continued --from one without a camera starts from its weights; the 10 zero tokens still
    take a share of each softmax, so unlike the embedding it does not start exactly as that prior."""
    camera_drop: float = 0.1
    """With camera_condition: the share of training images given no camera (zeros), which 2D sampling of a
    prompt without a view phrase asks for."""
    camera_lr: float = 3e-3
    """With camera_condition: the learning rate of the camera embedding (the rest of the UNet keeps ``lr``). It
    starts at zero and has one short stage to grow: at ``lr`` (3e-4) 1,000 steps left its output layer at a
    weight norm of 0.67 against the time embedding's 9.4, and 2D samples of the same noise came out in the same
    view whatever camera they were given (docs/shapes.md)."""

    @property
    def view_stage_kinds(self) -> tuple:
        """The kinds the view stage draws, and never captions plain."""
        return FRONTED if self.view_kinds == "fronted" else self.kinds

    def __post_init__(self):
        if self.steps <= 0 or self.batch_size <= 0 or self.checkpoint_every <= 0:
            raise Splat3dError("--steps, --batch-size and --checkpoint-every must be positive.")
        if self.view_steps < 0 or not 0.0 <= self.view_batch_share <= 1.0:
            raise Splat3dError("--view-steps must be >= 0 and --view-share (view_batch_share) within 0..1.")
        if self.view_kinds not in ("fronted", "all"):
            raise Splat3dError(f"--view-kinds is fronted or all, not {self.view_kinds!r}.")
        if not 0.0 <= self.camera_drop <= 1.0:
            raise Splat3dError("camera_drop must be within 0..1.")
        if self.camera_tokens and not self.camera_condition:
            raise Splat3dError("--camera-tokens says how the camera enters the UNet; add --camera.")
        if self.vae_detail_weight < 0:
            raise Splat3dError("--vae-detail-weight must be 0 (plain L1) or positive.")
        if self.camera_lr <= 0:
            raise Splat3dError("--camera-lr must be positive.")
        if self.view_fronted_weight <= 0 or self.view_front_weight <= 0:
            raise Splat3dError("--view-fronted-weight and --view-front-weight must be positive.")
        if self.view_steps and not set(self.kinds) & set(FRONTED):
            raise Splat3dError(f"--view-steps needs a kind with a front ({', '.join(FRONTED)}) among the kinds.")
        if self.latent and (self.vae_steps <= 0 or self.resolution % 4):
            raise Splat3dError("A latent prior needs positive --vae-steps and a resolution divisible by 4.")
        if self.weights_dtype not in ("float32", "float16"):
            raise Splat3dError(f"weights_dtype is float32 or float16, not {self.weights_dtype!r}.")


# Version 2 (in progress): 64-px renders through a latent autoencoder, overhead views in the dataset.
# Sized to fit 3 hours on 2 cores, measured here with both cores free: an autoencoder step (batch 32)
# 1.6 s, a UNet step (batch 64, 16x16x4 latents, 6.6 M parameters) 1.1 s: 1,500 + 5,500 steps, about
# 2 h 20 min, plus the dataset and the classifier.
VERSIONS = {
    1: {},
    2: dict(
        resolution=64,
        latent=True,
        views_per_object=320,
        overhead_share=0.2,
        block_out_channels=(64, 128, 128),
        steps=5500,
        vae_steps=1500,
        # 20% empty captions (10% in version 1): a stronger unconditional branch for CFG (docs/shapes.md).
        caption_dropout=0.2,
        # The 64-px classifier at 1,500 steps: held-out kind 0.979, view 0.951 (targets 0.98, 0.95).
        classifier_steps=2500,
        # In float32 the UNet, autoencoder and text encoder come to 30.7 MB, over the 30 MB budget.
        weights_dtype="float16",
        # No view stage (view_steps): 1,000 view steps onto this prior (--from shapes --view-steps 1000) raised
        # 2D views 0.635 -> 0.854, but in 3D the view phrase then also pulled doors and handles onto the other
        # kinds: 12 prompts x 3 seeds, prompt accuracy 0.965 -> 0.859 (-0.107 +- 0.039 paired), KID +74 +- 32,
        # view consistency only 0.792 -> 0.826 (docs/shapes.md). Shipped for a day, then withdrawn.
    ),  # fmt: skip
}


def camera_config(resolution: int) -> CameraConfig:
    """The cameras `generate` samples with the cpu preset, at the prior's resolution."""
    cam = build_config("cpu").camera
    cam.render_size, cam.render_size_schedule, cam.batch_size = resolution, [], 16
    return cam


def build_dataset(cfg: PriorTrainConfig, cache_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Renders (uint8 [M, 3, R, R]), object ids, elevations and azimuths; cached by settings."""
    fields = ("resolution", "views_per_object", "colours", "kinds", "seed", "overhead_share")
    key = json.dumps({"world": WORLD_VERSION, **{k: asdict(cfg)[k] for k in fields}})
    path = cache_dir / f"shapes-dataset-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    log(f"rendering the dataset into {path} (once)")
    objects = [(c, k) for c in cfg.colours for k in cfg.kinds]
    g = torch.Generator().manual_seed(cfg.seed)
    sampler = CameraSampler(camera_config(cfg.resolution), g)
    overhead = camera_config(cfg.resolution)
    overhead.elevation_range = [62.0, 88.0]
    overhead_sampler = CameraSampler(overhead, g)
    batches = -(-cfg.views_per_object // 16)
    n_overhead = round(batches * cfg.overhead_share)
    images, ids, elevations, azimuths = [], [], [], []
    with torch.no_grad():
        for i, (colour, kind) in enumerate(objects):
            scene = make_object(colour, kind)
            for b in range(batches):
                cams = (overhead_sampler if b < n_overhead else sampler).sample(0)
                out = render(scene, cams, 1.0, backend="torch")
                images.append((out.images.clamp(0, 1) * 255 + 0.5).to(torch.uint8))
                ids += [i] * len(cams)
                elevations.append(cams.elevation)
                azimuths.append(cams.azimuth)
    data = {
        "images": torch.cat(images),
        "object": torch.tensor(ids),
        "elevation": torch.cat(elevations),
        "azimuth": torch.cat(azimuths),
        "objects": [f"{c} {k}" for c, k in objects],
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_torch(data, path)
    return data


def captions(
    data: dict, index: torch.Tensor, cfg: PriorTrainConfig, g: torch.Generator, always_view: tuple = ()
) -> list[str]:
    """View-dependent captions, as the prompt processor writes them; some plain (never for the kinds in
    ``always_view``), some empty."""
    names = view_names(data["elevation"][index], data["azimuth"][index], PromptConfig())
    u = torch.rand(len(index), generator=g).tolist()
    out = []
    for i, name, r in zip(index.tolist(), names, u):
        prompt = f"a {data['objects'][data['object'][i]]}"
        if r < cfg.caption_dropout:
            out.append("")
        elif r < cfg.caption_dropout + cfg.plain_caption and prompt.split()[-1] not in always_view:
            out.append(prompt)
        else:
            out.append(view_prompt(prompt, name))
    return out


def build_models(cfg: PriorTrainConfig, tokenizer_dir: Path):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from splat3d.distill.priors.tiny import build_clip_tokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = build_clip_tokenizer(tokenizer_dir, vocabulary(), max_length=16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.cross_attention_dim,
            intermediate_size=2 * cfg.cross_attention_dim, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    n = len(cfg.block_out_channels)
    channels, size = (cfg.vae_latent_channels, cfg.resolution // 4) if cfg.latent else (3, cfg.resolution)
    unet = UNet2DConditionModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=cfg.block_out_channels,
        layers_per_block=1, cross_attention_dim=cfg.cross_attention_dim, norm_num_groups=8, attention_head_dim=8,
        # Attention only below the highest resolution: it dominates CPU cost there.
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        **_camera_unet_config(cfg),
    )  # fmt: skip
    if cfg.camera_condition and cfg.camera_tokens:  # zero camera tokens; the text passes unchanged
        torch.nn.init.zeros_(unet.encoder_hid_proj.image_embeds.weight)
        torch.nn.init.zeros_(unet.encoder_hid_proj.image_embeds.bias)
        with torch.no_grad():
            unet.encoder_hid_proj.text_proj.weight.copy_(torch.eye(cfg.cross_attention_dim))
            unet.encoder_hid_proj.text_proj.bias.zero_()
    elif cfg.camera_condition:  # starts as no camera at all
        torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)
    # Samplers clip the predicted x0 to [-1, 1] by default: right for pixels, wrong for latents (unit variance,
    # so clipping bends colours: v2 drew orange for red and green for blue until this was off). As in SD.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=not cfg.latent,
    )
    return tokenizer, text_encoder, unet, scheduler


def _camera_unet_config(cfg: PriorTrainConfig) -> dict:
    """The UNet settings that give it the camera the config asks for (none without camera_condition)."""
    if not cfg.camera_condition:
        return {}
    if cfg.camera_tokens:
        return {**CAMERA_TOKENS_CONFIG, "encoder_hid_dim": cfg.cross_attention_dim}
    return CAMERA_UNET_CONFIG


def _camera_module(cfg: PriorTrainConfig) -> str | None:
    """The name, inside the UNet, of the module that brings the camera in and starts at zero (its own learning
    rate and EMA warm-up)."""
    if not cfg.camera_condition:
        return None
    return "encoder_hid_proj.image_embeds" if cfg.camera_tokens else "class_embedding"


def detail_pixels(images: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] float mask of the shapes world's detail pixels in ``images`` ([B, 3, H, W] in [-1, 1]):
    within 0.15 of DETAIL_RGB in every channel (the nearest wall colour, at its darkest shading, is 0.26 away),
    grown by one pixel to take in the rims where a detail blends into its wall."""
    detail = torch.tensor(DETAIL_RGB, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) * 2 - 1
    near = ((images - detail).abs().amax(1, keepdim=True) < 0.3).to(images.dtype)
    return F.max_pool2d(near, 3, stride=1, padding=1)


def build_vae(cfg: PriorTrainConfig):
    """A small AutoencoderKL: resolution -> resolution/4, 4 latent channels by default (Stable Diffusion's layout)."""
    from diffusers import AutoencoderKL

    n = len(cfg.vae_block_out_channels)
    assert n == 3, "two downsamplings: resolution/4"
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.vae_latent_channels,
        block_out_channels=cfg.vae_block_out_channels, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=cfg.vae_layers_per_block, norm_num_groups=8,
        sample_size=cfg.resolution,
    )  # fmt: skip


def _check_same_settings(
    saved: dict,
    cfg: PriorTrainConfig,
    out: Path,
    unet_step: int,
    fix: str = "resume it with the same ones",
    also_free: tuple = (),
) -> None:
    """A training folder resumes only with the settings it was started with (step counts may change;
    the autoencoder's only until the UNet has begun to learn its latents)."""
    free = ("steps", "view_steps", "checkpoint_every", "keep_checkpoints", "classifier_steps", "weights_dtype")
    free += also_free
    free += () if unet_step else ("vae_steps",)
    if unet_step <= cfg.steps:  # the view stage has not begun: its settings are free
        free += ("view_batch_share", "view_kinds", "view_fronted_weight", "view_front_weight", "camera_condition",
                 "camera_drop", "camera_lr", "camera_tokens")  # fmt: skip
    as_json = lambda c: json.loads(json.dumps(asdict(c)))  # noqa: E731 - tuples become lists, as in checkpoints
    theirs = {**as_json(PriorTrainConfig()), **saved}  # settings added since the folder was started: defaults
    changed = sorted(k for k, v in as_json(cfg).items() if k not in free and theirs.get(k) != v)
    if changed:
        raise Splat3dError(
            f"{out} holds a prior trained with other settings ({', '.join(changed)}); "
            f"{fix} (e.g. the same --version) or choose another --out."
        )


def _exported_training(folder: Path) -> dict:
    """The training settings and UNet step count an exported prior records in its model_index.json."""
    try:
        meta = json.loads((folder / "model_index.json").read_text())["splat3d"]
        return {"config": meta["config"], "trained_steps": int(meta["trained_steps"])}
    except (OSError, ValueError, KeyError, TypeError):
        raise Splat3dError(
            f"{folder} is not a prior exported by `splat3d prior train` (no readable model_index.json with its "
            "training settings); start from such a folder or from a built-in prior's name."
        ) from None


class PriorTrainer:
    def __init__(
        self, cfg: PriorTrainConfig, out: Path, cache_dir: Optional[Path] = None, log=print,
        start_from: Optional[Path] = None, init_from: Optional[Path] = None,
    ):  # fmt: skip
        """``start_from``: an exported prior (a ``prior/`` folder) whose weights a new folder starts from, the
        stages it has done counted as done (e.g. the shipped prior, to add only ``view_steps``).

        ``init_from``: an exported prior whose weights (autoencoder, UNet, text encoder) are a new folder's
        first weights, every stage then running all its steps from them: fine-tuning, to retrain a prior with
        a changed autoencoder recipe (``vae_detail_weight``, ``vae_steps`` and the step counts may differ from
        its own) without the UNet's hours from scratch. A folder with checkpoints resumes from them and
        ignores both."""
        if start_from is not None and init_from is not None:
            raise Splat3dError("--from and --init-from exclude each other: --from continues a prior's stages, "
                               "--init-from runs them all again from its weights; give one.")  # fmt: skip
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.start_from = Path(start_from) if start_from is not None else None
        self.init_from = Path(init_from) if init_from is not None else None
        path, state, start = None, None, None
        source = start_from if start_from is not None else init_from
        if list_checkpoints(self.out / "checkpoints"):  # checked before any work
            path, state = load_newest_checkpoint(self.out / "checkpoints", set_aside=True)
            _check_same_settings(json.loads(state["config"]), cfg, self.out, state.get("unet_step", 0))
            self.init_from = Path(state["init_from"]) if state.get("init_from") else None
        elif source is not None:
            start = _exported_training(Path(source))
            also_free = ("vae_steps", "vae_detail_weight") if init_from is not None else ()
            _check_same_settings(start["config"], cfg, Path(source), start["trained_steps"],
                                 fix="start from it with the settings it was trained with",
                                 also_free=also_free)  # fmt: skip
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = build_dataset(cfg, cache_dir or self.out / "cache", log)
        self.tokenizer, self.text_encoder, self.unet, self.scheduler = build_models(cfg, self.out / "tokenizer")
        self.modules = torch.nn.ModuleDict({"unet": self.unet, "text_encoder": self.text_encoder})
        self.ema = copy.deepcopy(self.modules).requires_grad_(False)
        self.camera_module = _camera_module(cfg)
        camera = list(self.unet.get_submodule(self.camera_module).parameters()) if self.camera_module else []
        rest = [p for p in self.modules.parameters() if all(p is not c for c in camera)]
        groups = [{"params": rest}] + ([{"params": camera, "lr": cfg.camera_lr}] if camera else [])
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0  # UNet steps
        self.vae_step = 0
        self.vae = build_vae(cfg) if cfg.latent else None
        self.vae_optimizer = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_lr) if cfg.latent else None
        self.latents = None  # the dataset encoded by the trained VAE, times its scaling factor
        self._view_weights = None
        self.camera_start = 0  # the UNet step at which the camera embedding joined (its EMA warms up from there)
        if start is not None:
            self._load_exported(Path(source), start["trained_steps"], done=start_from is not None)
        if state is not None:
            self.modules.load_state_dict(state["modules"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.step = state.get("unet_step", state["step"])
            self.camera_start = state.get("camera_start", 0)
            if cfg.latent:
                self.vae.load_state_dict(state["vae"])
                self.vae_optimizer.load_state_dict(state["vae_optimizer"])
                self.vae_step = state["vae_step"]
            log(f"resuming from {path} (step {self.total_step})")

    def _load_exported(self, folder: Path, trained_steps: int, done: bool = True) -> None:
        """Weights and EMA from an exported prior (float16 exports come back as float32); ``done``: its stages
        count as done (``start_from``), else every stage runs from these weights (``init_from``)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        weights = {
            "unet": UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32),
            "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32),
        }
        for name, module in weights.items():
            missing, unexpected = self.modules[name].load_state_dict(module.state_dict(), strict=False)
            # a camera embedding the exported prior lacks keeps its zero start: the prior as it was
            new = f"{self.camera_module.split('.')[0]}." if self.camera_module else None  # the text's too
            if unexpected or any(new is None or not k.startswith(new) for k in missing):
                raise Splat3dError(f"{folder} holds a {name} of another layout; start from a prior of this version.")
            if missing and done:
                self.camera_start = trained_steps
        self.ema.load_state_dict(self.modules.state_dict())
        if self.cfg.latent:
            self.vae.load_state_dict(AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
                                     .state_dict())  # fmt: skip
        if done:
            self.vae_step = self.cfg.vae_steps if self.cfg.latent else 0
            self.step = trained_steps
            self.log(f"starting from the prior in {folder} ({trained_steps} UNet steps)")
        else:
            self.log(f"starting from the weights of the prior in {folder}; every stage runs all its steps")

    @property
    def total_step(self) -> int:
        """Steps of every stage so far (the autoencoder's, then the UNet's)."""
        return self.vae_step + self.step

    @property
    def total_steps(self) -> int:
        return (self.cfg.vae_steps if self.cfg.latent else 0) + self.cfg.steps + self.cfg.view_steps

    def train_vae_step(self) -> float:
        """One step of the autoencoder: L1 reconstruction plus a small KL term (images in [-1, 1])."""
        cfg = self.cfg
        index = torch.randint(0, len(self.data["images"]), (cfg.vae_batch_size,), generator=self.generator)
        x = self.data["images"][index].float() / 127.5 - 1.0
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=self.generator)
        recon = self.vae.decode(z).sample
        if cfg.vae_detail_weight:
            reconstruction = ((recon - x).abs() * (1 + cfg.vae_detail_weight * detail_pixels(x))).mean()
        else:  # version 2's, bit for bit
            reconstruction = F.l1_loss(recon, x)
        loss = reconstruction + cfg.vae_kl_weight * posterior.kl().mean()
        self.vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.vae_optimizer.step()
        self.vae_step += 1
        return loss.item()

    @torch.no_grad()
    def encode_dataset(self) -> None:
        """Posterior means of every image, scaled to unit variance (the factor goes into the VAE's config)."""
        self.vae.eval()
        means = torch.cat([
            self.vae.encode(chunk.float() / 127.5 - 1.0).latent_dist.mean for chunk in self.data["images"].split(256)
        ])  # fmt: skip
        scale = (1.0 / means.std()).item()
        self.vae.register_to_config(scaling_factor=scale)
        self.latents = means * scale

    def _view_stage_weights(self) -> torch.Tensor:
        """Sampling weights over the dataset for the view stage: the kinds it draws from (``view_kinds``) equally
        often (a kind with a front ``view_fronted_weight`` times as often), and within each kind its views
        equally often (the stratified cameras give sides twice the share of fronts or backs), but for the front of
        a kind with a front, ``view_front_weight`` times as often as each of the kind's other views."""
        kinds = [name.split()[-1] for name in self.data["objects"]]
        drawn = self.cfg.view_stage_kinds
        kind = [kinds[i] for i in self.data["object"].tolist()]
        names = view_names(self.data["elevation"], self.data["azimuth"], PromptConfig())
        cells = Counter(zip(kind, names))
        per_kind = Counter(k for k, _ in cells)  # views a kind has
        weight = {k: (self.cfg.view_fronted_weight if k in FRONTED else 1.0) if k in drawn else 0.0 for k in per_kind}
        front = lambda k, n: self.cfg.view_front_weight if k in FRONTED and n == "front" else 1.0  # noqa: E731
        view_total = Counter()  # per kind, the sum of its views' weights
        for k, n in cells:
            view_total[k] += front(k, n)
        weights = [weight[k] * front(k, n) / (cells[k, n] * view_total[k]) for k, n in zip(kind, names)]
        return torch.tensor(weights)  # not all zero: the config refuses a view stage without a fronted kind

    def train_step(self) -> float:
        cfg = self.cfg
        always_view = ()
        index = torch.randint(0, len(self.data["images"]), (cfg.batch_size,), generator=self.generator)
        if self.step >= cfg.steps:  # the view stage: part of the batch drawn as view_kinds says, views balanced
            if self._view_weights is None:
                self._view_weights = self._view_stage_weights()
            n = round(cfg.batch_size * cfg.view_batch_share)
            index[:n] = torch.multinomial(self._view_weights, n, replacement=True, generator=self.generator)
            always_view = () if cfg.camera_condition else cfg.view_stage_kinds
        x0 = self.latents[index] if cfg.latent else self.data["images"][index].float() / 127.5 - 1.0
        texts = captions(self.data, index, cfg, self.generator, always_view)
        if self.step >= cfg.steps and cfg.camera_condition:  # the drawn images learn the view from the camera
            texts[:n] = [split_view(text)[0] for text in texts[:n]]
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids  # fmt: skip
        noise = torch.randn(x0.shape, generator=self.generator)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=self.generator)
        x_t = self.scheduler.add_noise(x0, noise, t)
        camera = {}
        if cfg.camera_condition:
            keep = torch.rand(cfg.batch_size, generator=self.generator) >= cfg.camera_drop
            features = camera_features(self.data["elevation"][index], self.data["azimuth"][index]) * keep[:, None]
            camera = camera_kwargs(self.unet.config, features)
        pred = self.unet(x_t, t, encoder_hidden_states=self.text_encoder(tokens)[0], **camera).sample
        loss = F.mse_loss(pred, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.modules.parameters(), 1.0)
        self.optimizer.step()
        with torch.no_grad():
            # A camera embedding added by a --from stage warms its EMA up from that stage's start, as a new
            # module's should: at the prior's step count its EMA (decay 0.999) would lag ~1,000 steps behind a
            # weight that is still growing, most of a short stage.
            ema_decay = lambda k: min(cfg.ema_decay, (1 + k) / (10 + k))  # noqa: E731
            decay, camera_decay = ema_decay(self.step), ema_decay(self.step - self.camera_start)
            new = f"unet.{self.camera_module}."
            for (name, e), p in zip(self.ema.named_parameters(), self.modules.parameters()):
                e.lerp_(p, 1 - (camera_decay if name.startswith(new) else decay))
        self.step += 1
        return loss.item()

    def _unet_step(self) -> float:
        if self.cfg.latent and self.latents is None:  # the autoencoder is trained: encode once
            self.encode_dataset()
        return self.train_step()

    def save(self) -> Path:
        state = {
            "step": self.total_step, "unet_step": self.step, "camera_start": self.camera_start,
            "config": json.dumps(asdict(self.cfg)),
            "modules": self.modules.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "init_from": str(self.init_from or ""),
        }  # fmt: skip
        if self.cfg.latent:
            state.update(vae=self.vae.state_dict(), vae_optimizer=self.vae_optimizer.state_dict(),
                         vae_step=self.vae_step)  # fmt: skip
        return save_checkpoint(state, self.out / "checkpoints", self.cfg.keep_checkpoints)

    def export(self, folder: Optional[Path] = None) -> Path:
        """The EMA weights as a diffusers folder (safetensors), loadable by load_prior."""
        folder = Path(folder or self.out / "prior")
        dtype = getattr(torch, self.cfg.weights_dtype)
        stored = lambda module: copy.deepcopy(module).to(dtype)  # noqa: E731 - training keeps its float32
        stored(self.ema["unet"]).save_pretrained(folder / "unet")
        stored(self.ema["text_encoder"]).save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        if self.cfg.latent:
            stored(self.vae).save_pretrained(folder / "vae")
        index = {"_class_name": "StableDiffusionPipeline" if self.cfg.latent else "Splat3dPixelPrior",
                 "unet": ["diffusers", "UNet2DConditionModel"],
                 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", "DDPMScheduler"],
                 "vae": ["diffusers", "AutoencoderKL"] if self.cfg.latent else [None, None],
                 "splat3d": {"trained_steps": self.step, "config": asdict(self.cfg),
                             "initialised_from": str(self.init_from) if self.init_from else None,
                             "vocabulary": vocabulary(), "sample_guidance_scale": SAMPLE_GUIDANCE_SCALE,
                             "sample_eta": SAMPLE_ETA,
                             "sample_view_guidance_scale": SAMPLE_VIEW_GUIDANCE_SCALE}}  # fmt: skip
        (folder / "model_index.json").write_text(json.dumps(index, indent=1))
        return folder

    def export_classifier(self, folder: Path) -> dict:
        """Train the evaluator's classifier on the same renders and ship it beside the prior."""
        from splat3d.shapes.evaluate import ring_accuracy, save_classifier, train_classifier

        model, accuracy = train_classifier(self.data, steps=self.cfg.classifier_steps, seed=self.cfg.seed)
        accuracy = {"held_out": accuracy, "ring": ring_accuracy(model)}
        save_classifier(model, folder, accuracy)
        self.log(f"classifier held-out accuracy: {accuracy}")
        return accuracy

    def run(self, on_step: Optional[Callable[[int, float], None]] = None) -> Path:
        """Every stage to the end (the autoencoder first, for a latent prior); ``on_step(total_step, loss)``."""
        stages = []
        if self.cfg.latent:
            stages.append((lambda: self.vae_step < self.cfg.vae_steps, self.train_vae_step))
        stages.append((lambda: self.step < self.cfg.steps, self._unet_step))
        stages.append((lambda: self.step < self.cfg.steps + self.cfg.view_steps, self._unet_step))
        for unfinished, train_step in stages:
            while unfinished():
                loss = train_step()
                if on_step:
                    on_step(self.total_step, loss)
                if self.total_step % self.cfg.checkpoint_every == 0 or not unfinished():
                    self.save()
        if self.cfg.latent and self.latents is None:
            self.encode_dataset()  # the scaling factor goes into the exported VAE's config
        folder = self.export()
        if not (folder / "classifier.safetensors").exists():
            source = self.start_from or self.init_from
            if source is not None and (source / "classifier.safetensors").is_file():
                # the same dataset and seed would train the same classifier: keep the one it ships
                for name in ("classifier.safetensors", "classifier.json"):
                    shutil.copy2(source / name, folder / name)
            else:
                self.export_classifier(folder)
        return folder
