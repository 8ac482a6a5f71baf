"""The text-to-3D run: score distillation into 3D Gaussians, with densification.

One step, top to bottom (``Trainer.train_step``):

1. sample a batch of cameras (stratified azimuths) at the scheduled size;
2. render with the background (white, black, random per view, or learned);
3. the guidance loss (it steps its own LoRA inside) plus regularisers;
4. one Adam step of the Gaussians (3DGS learning rates, decaying means lr);
5. densify/prune through gsplat.strategy.

Checkpoints hold the complete state and are written atomically; resuming
from one continues bit for bit on CPU.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from splat3d.distill.guidance import make_guidance
from splat3d.distill.priors import default_model, load_prior
from splat3d.distill.prompts import PromptProcessor
from splat3d.errors import Splat3dError
from splat3d.io.fileio import AppendLog, FolderLock, WriteFailed, atomic_write, ensure_writable_dir
from splat3d.io.media import grid, save_png, save_video, to_uint8
from splat3d.render import render, resolve_device
from splat3d.render.cameras import CameraSampler, turntable
from splat3d.run.checkpoint import list_checkpoints, load_newest_checkpoint, rng_state, save_checkpoint, set_rng_state
from splat3d.run.config import RunConfig, from_yaml_text, to_yaml
from splat3d.run.strategy import initialize_state, make_strategy, step_post_backward
from splat3d.scene import PARAM_NAMES, GaussianScene
from splat3d.scene.ply import read_ply, write_ply

RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "scene.ply", "config.yaml", "preview.png", "views.png",
               "turntable.mp4", "turntable.gif", "renders", "eval.json")  # fmt: skip


class RunInterrupted(Exception):
    """Ctrl-C: a checkpoint was written; the message says how to resume."""


class NonFiniteRun(Splat3dError):
    """Too many non-finite steps in a row; a checkpoint was written."""


def check_run_folder(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder without --overwrite. Writes nothing."""
    if out.exists() and not out.is_dir():
        raise Splat3dError(f"Output path {out} is a file; choose a folder with --out.")
    if out.is_dir() and any(p.name != FolderLock.NAME for p in out.iterdir()) and not overwrite:
        raise Splat3dError(
            f"Run folder {out} is not empty; pass --overwrite to replace it, --resume {out} to continue it, "
            "or choose another --out."
        )


def prepare_run_folder(out: Path, overwrite: bool) -> None:
    """Check the folder, clear only our own outputs from it, and prove it writable."""
    check_run_folder(out, overwrite)
    if out.is_dir():
        for name in RUN_OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    ensure_writable_dir(out)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """Owns a run's state; ``run()`` trains to ``config.steps``."""

    def __init__(self, config: RunConfig, out: Path, prior=None):
        self.config = cfg = config
        self.out = Path(out)
        self.device = resolve_device(cfg.device)
        if cfg.model == "auto":  # recorded resolved, so config.yaml repeats the run exactly
            cfg.model = default_model(self.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.prior = prior or load_prior(cfg.model, self.device)
        self.prompt = PromptProcessor(self.prior, cfg.prompt)
        self.guidance = make_guidance(cfg.method, self.prior, self.prompt, cfg.guidance)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.cameras = CameraSampler(cfg.camera, self.generator)
        self.scene = self._initial_scene().to(self.device)
        self.extent = cfg.init.radius if cfg.init.kind == "ball" else self._scene_extent()
        self.step = 0
        self.background = torch.nn.Parameter(torch.full((3,), 0.5, device=self.device))
        self.background_optimizer = torch.optim.Adam([self.background], lr=cfg.optim.background_lr)
        self.optimizers = self._make_optimizers()
        self.strategy = make_strategy(cfg.strategy, self.device)
        self.strategy.check_sanity(self.scene.params, self.optimizers)
        self.strategy_state = initialize_state(self.strategy, self.extent)
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.elapsed = 0.0
        self.stop_requested = False

    # ------------------------------------------------------------- set-up
    def _initial_scene(self) -> GaussianScene:
        init = self.config.init
        if init.kind == "ply":
            return read_ply(init.path).with_sh_degree(init.sh_degree)
        return GaussianScene.random_ball(
            init.count, init.radius, init.opacity, init.color, init.sh_degree,
            generator=torch.Generator().manual_seed(self.config.seed),
        )  # fmt: skip

    def _scene_extent(self) -> float:
        means = self.scene.means.detach()
        return max(float(torch.quantile(means.norm(dim=-1).double(), 0.9)), 1e-3) if len(means) else 1.0

    def _learning_rates(self) -> dict[str, float]:
        o = self.config.optim
        progress = min(1.0, self.step / max(1, self.config.steps))
        means = o.means_lr * (o.means_lr_final / o.means_lr) ** progress
        return {
            "means": means * self.extent, "scales": o.scales_lr, "quats": o.quats_lr,
            "opacities": o.opacities_lr, "sh0": o.sh0_lr, "shN": o.shN_lr,
        }  # fmt: skip

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        # One Adam per parameter, as gsplat's strategies expect (they swap
        # tensors and their moments by name).
        lrs = self._learning_rates()
        return {name: torch.optim.Adam([self.scene.params[name]], lr=lrs[name], eps=1e-15) for name in PARAM_NAMES}

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
        self.strategy.step_pre_backward(self.scene.params, self.optimizers, self.strategy_state, step, rendered.info)
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
            step_post_backward(
                self.strategy,
                self.scene.params,
                self.optimizers,
                self.strategy_state,
                step,
                rendered.info,
                means_lr=self.optimizers["means"].param_groups[0]["lr"],
            )
        else:
            # Skip the update entirely: no NaN ever reaches the Gaussians.
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            for opt in (*self.optimizers.values(), self.background_optimizer):
                opt.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": loss.item(), "finite": finite, **guided.logs}

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "config": to_yaml(self.config),
            "params": {k: v.detach().cpu() for k, v in self.scene.raw().items()},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "strategy": {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.strategy_state.items()},
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
        self.optimizers = self._make_optimizers()
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.strategy_state = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in state["strategy"].items()}
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
        return save_checkpoint(self.state_dict(), self.out / "checkpoints", self.config.output.keep_checkpoints)

    @classmethod
    def resume(cls, out: Path, steps: Optional[int] = None, device: Optional[str] = None, prior=None) -> Trainer:
        """Continue the run in ``out`` from its last complete checkpoint."""
        out = Path(out)
        if not list_checkpoints(out / "checkpoints"):
            raise Splat3dError(f"{out} has no checkpoints to resume from; start a new run with --out {out}.")
        path, state = load_newest_checkpoint(out / "checkpoints", set_aside=True)
        try:
            config = from_yaml_text(state["config"])
        except Splat3dError as e:
            raise Splat3dError(f"Checkpoint {path} holds an incompatible config ({e})") from None
        if steps is not None:
            config.steps = steps
        if device is not None:
            config.device = device
        trainer = cls(config, out, prior=prior)
        trainer.load_state_dict(state)
        trainer._truncate_metrics()
        return trainer

    # ------------------------------------------------------------ outputs
    def _truncate_metrics(self) -> None:
        """Drop metric lines past the checkpoint we resume from (no duplicates)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(x + "\n" for x in kept)))

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

    def write_preview(self) -> None:
        o = self.config.output
        save_png(grid(self.render_views(o.preview_views, o.preview_size), columns=o.preview_views),
                 self.out / "preview.png")  # fmt: skip

    def write_final(self) -> None:
        o = self.config.output
        write_ply(self.scene, self.out / "scene.ply")
        save_png(grid(self.render_views(o.final_views, o.video_size), columns=min(4, o.final_views)),
                 self.out / "views.png")  # fmt: skip
        save_video(self.render_views(o.video_frames, o.video_size), self.out / "turntable.mp4")

    def write_config(self) -> None:
        text = to_yaml(self.config)
        atomic_write(self.out / "config.yaml", lambda tmp: Path(tmp).write_text(text))

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
            saved = list_checkpoints(self.out / "checkpoints")
            kept = f"its checkpoint of step {int(saved[-1].stem[5:])} is intact" if saved else "it has no checkpoint"
            raise Splat3dError(
                f"{e}; the run stopped at step {self.step} and {kept}: free some space (or fix the disk) and "
                f"resume with: splat3d generate --resume {self.out}"
            ) from None

    def _run(self, on_step: Optional[Callable[[int, dict], None]]) -> None:
        cfg, o = self.config, self.config.output
        self.write_config()
        with AppendLog(self.out / "metrics.jsonl") as metrics, _sigint_sets(self):
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
                    self.write_preview()
        self.write_final()


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


def last_step(out: Path) -> int:
    """The step of a run folder's newest metrics line (0 if none)."""
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().strip().splitlines()
    try:
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (ValueError, KeyError, TypeError):
        return 0
