"""Typed run configuration (OmegaConf structured configs), presets and overrides.

A run's configuration is the dataclass ``RunConfig`` below, composed of the
configs that live beside their code (PromptConfig, GuidanceConfig,
CameraConfig, InitConfig, OptimConfig, StrategyConfig, SizeConfig, OutputConfig), each of
which checks its own values when built. It is merged in this
order: the defaults, a preset or YAML file (``--config``), dotted overrides
(``--set guidance.lookahead_scale=0.1``), then the command-line options.
Unknown keys are errors that name the closest known keys. The fully resolved
config is written to every run folder as config.yaml, and
``splat3d generate --config RUN/config.yaml`` repeats the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from splat3d.distill.guidance.base import GuidanceConfig
from splat3d.distill.priors import default_model
from splat3d.distill.prompts import PromptConfig
from splat3d.errors import Splat3dError
from splat3d.render.cameras import CameraConfig
from splat3d.run.folder import OutputConfig
from splat3d.run.optim import OptimConfig
from splat3d.run.size import SizeConfig
from splat3d.run.strategy import StrategyConfig
from splat3d.scene.init import InitConfig

BACKGROUNDS = ("white", "black", "random", "learned")


@dataclass
class RunConfig:
    """Everything a `splat3d generate` run needs."""

    prompt: PromptConfig = field(default_factory=PromptConfig)
    method: str = "l2vsd"
    """sds, vsd, lvsd or l2vsd."""
    model: str = "auto"
    """Built-in prior name, local diffusers folder, or Hugging Face id; auto: Stable Diffusion
    (priors.DEFAULT_SD_MODEL) with CUDA, the built-in shapes prior without."""
    steps: int = 1000
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    """Rasterizer: auto (gsplat on CUDA, torch on CPU), gsplat or torch."""
    background: str = "random"
    """white, black, random (a colour per view) or learned."""
    max_nonfinite_steps: int = 20
    """Stop (with a checkpoint) after this many non-finite steps in a row."""
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    size: SizeConfig = field(default_factory=SizeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        from splat3d.distill.guidance import REGISTRY

        if not self.prompt.prompt or not self.prompt.prompt.strip():
            raise Splat3dError('The prompt is empty; describe what to generate, e.g. splat3d generate "a red cube".')
        if self.method not in REGISTRY:
            raise Splat3dError(f"Unknown method {self.method!r}; choose one of {', '.join(sorted(REGISTRY))}.")
        if self.steps <= 0:
            raise Splat3dError(f"steps must be positive, got {self.steps}; pass e.g. --steps 500.")
        if self.background not in BACKGROUNDS:
            raise Splat3dError(f"Unknown background {self.background!r}; choose one of {', '.join(BACKGROUNDS)}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise Splat3dError(f"Unknown device {self.device!r}; choose auto, cpu or cuda.")
        if self.backend not in ("auto", "gsplat", "torch"):
            raise Splat3dError(f"Unknown backend {self.backend!r}; choose auto, gsplat or torch.")
        if (self.guidance.perp_neg_side or self.guidance.perp_neg_back) and not self.prompt.view_dependent:
            raise Splat3dError("Perp-Neg (guidance.perp_neg_side/back) needs view-dependent prompts; "
                               "set prompt.view_dependent=true or the weights to 0.")  # fmt: skip
        if self.guidance.view_guidance_scale is not None and not self.prompt.view_dependent:
            raise Splat3dError("guidance.view_guidance_scale guides the view phrase, which needs view-dependent "
                               "prompts; set prompt.view_dependent=true or view_guidance_scale to null.")  # fmt: skip


# ------------------------------------------------------------------ presets
def preset_dir() -> Path:
    return Path(str(resources.files("splat3d_configs")))


def presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        keys.append(name)
        if isinstance(v, DictConfig):
            keys += _all_keys(v, name + ".")
    return keys


def _unknown_key(key: str, where: str) -> Splat3dError:
    known = _all_keys(OmegaConf.structured(RunConfig))
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in known if k.endswith("." + leaf) and k not in close][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `splat3d config show` to list the keys."
    return Splat3dError(f"Unknown config key {key!r} in {where}{hint}")


def _merge(base: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e)
        raise _unknown_key(str(key), where) from None
    except (OmegaConfBaseException, TypeError, ValueError) as e:  # OmegaConf raises the last two for shape clashes
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise Splat3dError(f"Bad value in {where}: {msg}; check the type of that setting.") from None


def load_yaml(path: Union[str, Path]) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        hint = f" Presets: {', '.join(presets())}." if presets() else ""
        raise Splat3dError(f"Config {path} does not exist; pass a YAML file or a preset name.{hint}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML errors come in many types
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise Splat3dError(f"Cannot read config {path} ({msg}); fix the YAML.") from None
    if not isinstance(loaded, DictConfig):
        raise Splat3dError(f"Config {path} is not a mapping of settings; fix the YAML.")
    return loaded


def resolve_config_source(name_or_path: str) -> Path:
    """A preset name (configs/NAME.yaml) or a path to a YAML file."""
    candidate = preset_dir() / f"{name_or_path}.yaml"
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        if candidate.is_file():
            return candidate
        raise Splat3dError(f"Unknown preset {name_or_path!r}; choose one of {', '.join(presets())}, or a YAML path.")
    return Path(name_or_path)


def build_config(
    config_file: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    **options: Any,
) -> RunConfig:
    """Defaults <- preset/file <- --set overrides <- explicit options (None skipped).

    ``options`` use dotted keys with "__" for ".", e.g. prompt__prompt="a cube".
    """
    layers: list[tuple[Any, str]] = []
    if config_file:
        source = resolve_config_source(config_file)
        layers.append((load_yaml(source), str(source)))
    for item in overrides or []:
        if "=" not in item:
            raise Splat3dError(f"--set {item!r} is not KEY=VALUE; write e.g. --set guidance.lookahead_scale=0.1.")
        key, value = item.split("=", 1)
        try:
            layers.append((OmegaConf.from_dotlist([f"{key.strip()}={value}"]), f"--set {item}"))
        except Exception as e:  # noqa: BLE001 - OmegaConf and the YAML parser under it raise many types
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise Splat3dError(f"--set {item!r} cannot be parsed ({reason}); write KEY=VALUE in YAML syntax.") from None
    explicit: dict = {}
    for name, value in options.items():  # values go in as they are, never through YAML text
        if value is not None:
            *parents, leaf = name.split("__")
            node = explicit
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
    if explicit:
        layers.append((OmegaConf.create(_literal(explicit)), "the command-line options"))

    def merged(first_layers):
        cfg = OmegaConf.structured(RunConfig)
        for layer, where in [*first_layers, *layers]:
            cfg = _merge(cfg, layer, where)
        return cfg

    # The method's preset (configs/METHOD.yaml) sits right above the defaults,
    # so files, --set and options all override it. Without a config file the
    # device's preset comes next: cpu (defaults that finish on 2 cores) without
    # CUDA, gpu (Stable Diffusion at 512 px) with it.
    first = merged([])
    base = []
    method_preset = preset_dir() / f"{first.method}.yaml"
    if method_preset.is_file():
        base.append((load_yaml(method_preset), str(method_preset)))
    if config_file is None:
        device_preset = preset_dir() / ("cpu.yaml" if _runs_on_cpu(first.device) else "gpu.yaml")
        base.append((load_yaml(device_preset), str(device_preset)))
    cfg = merged(base)
    try:
        run: RunConfig = OmegaConf.to_object(cfg)  # each section validates itself (__post_init__)
    except OmegaConfBaseException as e:  # e.g. an interpolation that points nowhere: steps: ${nope}
        raise Splat3dError(f"Cannot resolve the settings ({str(e).splitlines()[0]}); check the values.") from None
    if run.model == "auto":  # resolved here, once, so config.yaml repeats the run exactly
        run = dataclasses.replace(run, model=default_model(torch.device("cpu" if _runs_on_cpu(run.device) else "cuda")))
    return run


def stretch_schedule(run: RunConfig, factor: float) -> RunConfig:
    """The run ``factor`` times as long with its whole schedule stretched alike: steps, the densification
    window and interval, the opacity-reset and cleanup intervals, the timestep annealing and the render-size
    switches. The number of densify/prune events stays the same (``generate --budget``, the benchmarks).

    The Gaussians' learning rates are divided by ``factor``, so a longer run takes more, smaller steps over the
    same distance (Adam moves a parameter about lr per step) and averages more of the noisy score: at 3x the steps
    with the rates unchanged the scenes shrank (the torus thinned, IoU fell 0.07 on the shipped prior); with them
    divided by 3, IoU rose 0.026 over 1x on four prompts and ties 1x over all 12 (-0.005 +- 0.009; spheres and cubes,
    too large already, grow a little more; docs/benchmarks.md, "L2-VSD's regime"). The LoRA's rate stays: the
    score model has to keep up with the renders whatever the budget."""
    if factor <= 0:
        raise Splat3dError(f"--budget must be positive, not {factor}.")
    at = lambda step: max(1, round(step * factor))  # noqa: E731
    every = lambda n: at(n) if n > 0 else 0  # noqa: E731 - 0 stays "never"
    s, g, c, o = run.strategy, run.guidance, run.camera, run.optim
    rates = {f.name: getattr(o, f.name) / factor for f in dataclasses.fields(o) if "_lr" in f.name}  # + means_lr_final
    return dataclasses.replace(
        run,
        steps=at(run.steps),
        optim=dataclasses.replace(o, **rates),
        strategy=dataclasses.replace(
            s, refine_start=round(s.refine_start * factor), refine_stop=at(s.refine_stop),
            refine_every=at(s.refine_every), reset_every=every(s.reset_every), cleanup_every=every(s.cleanup_every),
        ),
        guidance=dataclasses.replace(
            g, anneal_start_step=None if g.anneal_start_step is None else round(g.anneal_start_step * factor),
            anneal_end_step=None if g.anneal_end_step is None else at(g.anneal_end_step),
        ),
        camera=dataclasses.replace(c, render_size_schedule=[[at(step), size] for step, size in c.render_size_schedule]),
    )  # fmt: skip


def schedule_problems(run: RunConfig) -> list[str]:
    """Step-valued settings that fall outside the run (or can never act), one sentence each."""
    steps, s, g = run.steps, run.strategy, run.guidance
    problems = []
    if not 0 <= s.refine_start < s.refine_stop <= steps:
        problems.append(f"densification runs from strategy.refine_start {s.refine_start} to strategy.refine_stop "
                        f"{s.refine_stop}, which is not a window inside the run's {steps} steps")  # fmt: skip
    elif s.refine_every > s.refine_stop - s.refine_start:
        problems.append(f"strategy.refine_every {s.refine_every} is longer than the densification window")
    if s.kind == "default" and s.reset_every >= s.refine_stop:
        problems.append(f"strategy.reset_every {s.reset_every} never acts before strategy.refine_stop "
                        f"{s.refine_stop}; use 0 for never")  # fmt: skip
    if g.anneal_start_step is not None and not 0 <= g.anneal_start_step < steps:
        problems.append(f"guidance.anneal_start_step {g.anneal_start_step} is outside the run's {steps} steps")
    if g.anneal_end_step is not None and not (g.anneal_start_step or 0) < g.anneal_end_step <= steps:
        problems.append(f"guidance.anneal_end_step {g.anneal_end_step} is outside the anneal's window")
    for step, size in run.camera.render_size_schedule:
        if not 0 < step < steps:
            problems.append(f"camera.render_size_schedule switches to {size} px at step {step}, outside the run")
    for name in ("checkpoint_every", "preview_every"):
        if getattr(run.output, name) > steps:
            problems.append(f"output.{name} {getattr(run.output, name)} is longer than the run's {steps} steps")
    return problems


def _runs_on_cpu(device: str) -> bool:
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def _literal(value: Any) -> Any:
    """Escape OmegaConf interpolations in strings, so a prompt like "a ${x}" stays exactly that."""
    if isinstance(value, str):
        # OmegaConf's grammar: "\${" is a literal "${"; backslashes right before it are doubled to stay literal.
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    return value


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML; reading it back gives the same values (strings stay literal)."""
    return OmegaConf.to_yaml(OmegaConf.create(_literal(dataclasses.asdict(config))))


def from_yaml_text(text: str) -> RunConfig:
    cfg = _merge(OmegaConf.structured(RunConfig), OmegaConf.create(text), "the checkpoint's config")
    return OmegaConf.to_object(cfg)
