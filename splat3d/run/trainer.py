"""The text-to-3D run: score distillation into 3D Gaussians, with densification.

One step, top to bottom (``Trainer.train_step``):

1. sample a batch of cameras (stratified azimuths) at the scheduled size;
2. render with the background (white, black, random per view, or learned);
3. the guidance loss (it steps its own LoRA inside) plus regularisers;
4. one Adam step of the Gaussians (3DGS learning rates, decaying means lr);
5. densify/prune through gsplat.strategy.

``start_run`` and ``resume_run`` open a run folder (locked, checked, cleared
or read back) and hand over a Trainer; ``Trainer.run`` trains to the last
step, checkpointing as it goes, and writes the results through the
RunFolder. Checkpoints hold the complete state; resuming from one continues
bit for bit on CPU.

    with start_run(build_config(None, prompt__prompt="a red cube"), "runs/cube") as trainer:
        trainer.run()
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch

from splat3d.distill.guidance import make_guidance
from splat3d.distill.priors import load_prior
from splat3d.distill.prompts import PromptProcessor
from splat3d.errors import Splat3dError
from splat3d.io.fileio import WriteFailed
from splat3d.io.media import to_uint8
from splat3d.render import render, resolve_device
from splat3d.render.cameras import CameraSampler, turntable
from splat3d.run.checkpoint import rng_state, set_rng_state
from splat3d.run.config import RunConfig, from_yaml_text, to_yaml
from splat3d.run.folder import RunFolder
from splat3d.run.optim import learning_rates, make_optimizers
from splat3d.run.size import calibration_steps, prior_foreground, rescale_scene, size_factor
from splat3d.run.strategy import Densifier
from splat3d.scene import GaussianScene
from splat3d.scene.extent import scene_extent
from splat3d.scene.init import initial_scene


class RunInterrupted(Exception):
    """Ctrl-C: a checkpoint was written; the message says how to resume."""


class NonFiniteRun(Splat3dError):
    """Too many non-finite steps in a row; a checkpoint was written."""


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """Owns a run's state; ``run()`` trains to ``config.steps``. Open one with start_run or resume_run."""

    def __init__(self, config: RunConfig, folder: RunFolder, prior=None):
        assert config.model != "auto", "build the config with build_config, which resolves the model"
        self.config = cfg = config
        self.folder = folder
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.prior = prior or load_prior(cfg.model, self.device)
        self.prompt = PromptProcessor(self.prior, cfg.prompt)
        self.guidance = make_guidance(cfg.method, self.prior, self.prompt, cfg.guidance)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.cameras = CameraSampler(cfg.camera, self.generator)
        self.scene = initial_scene(cfg.init, cfg.seed).to(self.device)
        self.extent = cfg.init.radius if cfg.init.kind == "ball" else scene_extent(self.scene, 0.9)
        self.step = 0
        self.background = torch.nn.Parameter(torch.full((3,), 0.5, device=self.device))
        self.background_optimizer = torch.optim.Adam([self.background], lr=cfg.optim.background_lr)
        self.optimizers = make_optimizers(self.scene, self._learning_rates())
        self.densifier = Densifier(cfg.strategy, self.scene.params, self.optimizers, self.extent, self.device)
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.size_target: Optional[float] = None
        self.elapsed = 0.0
        self.stop_requested = False

    @property
    def out(self) -> Path:
        return self.folder.path

    def _learning_rates(self) -> dict[str, float]:
        return learning_rates(self.config.optim, min(1.0, self.step / max(1, self.config.steps)), self.extent)

    # --------------------------------------------------------------- step
    def _backgrounds(self, n: int) -> torch.Tensor:
        kind = self.config.background
        if kind == "white":
            return torch.ones(n, 3, device=self.device)
        if kind == "black":
            return torch.zeros(n, 3, device=self.device)
        if kind == "random":
            return torch.rand(n, 3, generator=self.generator).to(self.device)
        return torch.sigmoid((self.background - 0.5) * 4).expand(n, 3)

    def train_step(self) -> dict:
        cfg, step = self.config, self.step
        for name, lr in self._learning_rates().items():
            self.optimizers[name].param_groups[0]["lr"] = lr
        cams = self.cameras.sample(step).to(self.device)
        rendered = render(self.scene, cams, self._backgrounds(len(cams)), backend=cfg.backend)
        self.densifier.step_pre_backward(self.scene.params, self.optimizers, step, rendered.info)
        guided = self.guidance(rendered.images, cams, step)
        loss = guided.loss
        if cfg.optim.opacity_reg:
            loss = loss + cfg.optim.opacity_reg * self.scene.opacities.mean()
        if cfg.optim.scale_reg:
            loss = loss + cfg.optim.scale_reg * self.scene.scales.max(dim=-1).values.mean()
        loss.backward()

        trainable = [*self.scene.params.values(), self.background]
        finite = bool(torch.isfinite(loss)) and all(
            p.grad is None or bool(torch.isfinite(p.grad).all()) for p in trainable
        )
        if finite:
            self.nonfinite_in_a_row = 0
            for opt in (*self.optimizers.values(), self.background_optimizer):
                opt.step()
                opt.zero_grad(set_to_none=True)
            means_lr = self.optimizers["means"].param_groups[0]["lr"]
            self.densifier.step_post_backward(self.scene.params, self.optimizers, step, rendered.info, means_lr)
        else:
            # Skip the update entirely: no NaN ever reaches the Gaussians.
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            for opt in (*self.optimizers.values(), self.background_optimizer):
                opt.zero_grad(set_to_none=True)
        self.densifier.cleanup(self.scene.params, self.optimizers, step, cfg.steps)
        self.step += 1
        logs = {"loss": loss.item(), "finite": finite, **guided.logs}
        if self.step in calibration_steps(cfg.size, cfg.steps):
            logs["size_factor"] = self.calibrate_size()
        return logs

    def calibrate_size(self) -> float:
        """Rescale the scene to the prior's own object size (splat3d.run.size); returns the factor."""
        cfg = self.config
        if self.size_target is None:  # the prior's samples, drawn once per process (the same on resume)
            self.size_target = prior_foreground(self.prior, cfg.prompt.prompt, cfg.size, cfg.camera, cfg.seed)
        factor = size_factor(self.scene, self.size_target, cfg.size, cfg.camera, self.prior.image_size, cfg.backend)
        rescale_scene(self.scene, math.log(factor))
        return factor

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "config": to_yaml(self.config),
            "params": {k: v.detach().cpu() for k, v in self.scene.raw().items()},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "strategy": self.densifier.state_dict(),
            "background": self.background.detach().cpu(),
            "background_optimizer": self.background_optimizer.state_dict(),
            "guidance": self.guidance.state_dict(),
            "generator": self.generator.get_state(),
            "rng": rng_state(),
            "counters": {
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "nonfinite_total": self.nonfinite_total,
                "elapsed": self.elapsed,
            },  # fmt: skip
        }

    def load_state_dict(self, state: dict) -> None:
        self.scene = GaussianScene(**{k: v.to(self.device) for k, v in state["params"].items()})
        self.optimizers = make_optimizers(self.scene, self._learning_rates())
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.densifier.load_state_dict(state["strategy"])
        with torch.no_grad():
            self.background.copy_(state["background"])
        self.background_optimizer.load_state_dict(state["background_optimizer"])
        self.guidance.load_state_dict(state["guidance"])
        self.generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        counters = state["counters"]
        self.nonfinite_in_a_row = counters["nonfinite_in_a_row"]
        self.nonfinite_total = counters["nonfinite_total"]
        self.elapsed = counters["elapsed"]

    def save_checkpoint(self) -> Path:
        return self.folder.save_checkpoint(self.state_dict(), self.config.output.keep_checkpoints)

    # ------------------------------------------------------------ outputs
    @torch.no_grad()
    def render_views(self, n: int, size: int, elevation: float = 15.0) -> list[np.ndarray]:
        radius = float(np.mean(self.config.camera.radius_range))
        fovy = float(np.mean(self.config.camera.fovy_range))
        cams = turntable(n, elevation, radius, fovy, size, size).to(self.device)
        frames = []
        for i in range(0, n, 8):
            out = render(self.scene, cams[i : i + 8], 1.0, backend=self.config.backend)
            frames += [to_uint8(img) for img in out.images]
        return frames

    # ---------------------------------------------------------------- run
    def run(self, on_step: Optional[Callable[[int, dict], None]] = None) -> None:
        """Train to ``config.steps``, then write scene.ply and the pictures.

        A file that cannot be written (full disk, I/O error, read-only file
        system) stops the run with one sentence; every file already there,
        the newest checkpoint included, stays as it was.
        """
        try:
            self._run(on_step)
        except WriteFailed as e:
            saved = self.folder.checkpoints()
            kept = f"its checkpoint of step {int(saved[-1].stem[5:])} is intact" if saved else "it has no checkpoint"
            raise Splat3dError(
                f"{e}; the run stopped at step {self.step} and {kept}: free some space (or fix the disk) and "
                f"resume with: splat3d generate --resume {self.out}"
            ) from None

    def _run(self, on_step: Optional[Callable[[int, dict], None]]) -> None:
        cfg, o = self.config, self.config.output
        self.folder.write_config_text(to_yaml(cfg))
        with self.folder.open_metrics() as metrics, _sigint_sets(self):
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                logs = self.train_step()
                self.elapsed += time.perf_counter() - t0
                if self.step % o.metrics_every == 0 or self.step == cfg.steps:
                    record = {"step": self.step, **logs, "n_gaussians": len(self.scene),
                              "seconds": round(self.elapsed, 4),
                              "peak_memory_mb": round(_peak_memory_mb(self.device), 1)}  # fmt: skip
                    metrics.append(json.dumps(record))
                if on_step:
                    on_step(self.step, {**logs, "n_gaussians": len(self.scene)})
                if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                    self.save_checkpoint()
                    raise NonFiniteRun(
                        f"Stopped at step {self.step} after {self.nonfinite_in_a_row} non-finite steps in a "
                        f"row (checkpoint saved); lower the learning rates or the CFG scale and resume with "
                        f"--resume {self.out}."
                    )
                if self.stop_requested:
                    self.save_checkpoint()
                    raise RunInterrupted(
                        f"Interrupted at step {self.step}; checkpoint saved. Resume with: "
                        f"splat3d generate --resume {self.out}"
                    )
                if self.step % o.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
                if self.step % o.preview_every == 0:
                    self.folder.write_preview(self.render_views(o.preview_views, o.preview_size))
        self.folder.write_final(
            self.scene, self.render_views(o.final_views, o.video_size), self.render_views(o.video_frames, o.video_size)
        )


@contextmanager
def _sigint_sets(trainer: Trainer):
    """Ctrl-C asks the loop to stop after the current step (and checkpoint)."""

    def handler(signum, frame):
        if trainer.stop_requested:  # a second Ctrl-C stops at once; the last checkpoint stays
            raise KeyboardInterrupt
        trainer.stop_requested = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not in the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------ entry points
@contextmanager
def start_run(
    config: RunConfig, out: Union[str, Path, RunFolder], overwrite: bool = False, prior=None,
    command: str = "splat3d generate",
) -> Iterator[Trainer]:  # fmt: skip
    """A new run in ``out``: lock the folder, check it, load the model, clear the folder, hand over the Trainer.

    The lock is held until the block ends. The model loads before anything is
    written, so a model that cannot load leaves the folder as it was.
    """
    folder = out if isinstance(out, RunFolder) else RunFolder(out)
    with folder.locked(command, hint="or choose another --out"):
        folder.check_new(overwrite)
        trainer = Trainer(config, folder, prior)
        folder.clear()
        yield trainer


@contextmanager
def resume_run(
    out: Union[str, Path, RunFolder], steps: Optional[int] = None, device: Optional[str] = None, prior=None,
    command: str = "splat3d generate",
) -> Iterator[Trainer]:  # fmt: skip
    """Continue the run in ``out`` from its newest good checkpoint (optionally to another step count or device)."""
    folder = out if isinstance(out, RunFolder) else RunFolder(out)
    with folder.locked(command, hint="before resuming it"):
        path, state = folder.newest_checkpoint(set_aside=True)
        try:
            config = from_yaml_text(state["config"])
        except Splat3dError as e:
            raise Splat3dError(f"Checkpoint {path} holds an incompatible config ({e})") from None
        if steps is not None:
            config = dataclasses.replace(config, steps=steps)  # validated again, like any config
        if device is not None:
            config = dataclasses.replace(config, device=device)
        trainer = Trainer(config, folder, prior)
        trainer.load_state_dict(state)
        folder.trim_metrics(trainer.step)
        yield trainer
