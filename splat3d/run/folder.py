"""The run folder: one place that knows its layout, holds its lock and writes its files.

    RUN/
      config.yaml        the fully resolved config (splat3d generate --config RUN/config.yaml repeats the run)
      metrics.jsonl      one line per step: step, losses, Gaussian count, seconds, peak memory
      checkpoints/       step_NNNNNN.pt, the newest ``keep_checkpoints`` (a corrupt one set aside as .corrupt)
      preview.png        refreshed during the run
      scene.ply          the result; views.png and turntable.mp4 (or .gif) beside it
      renders/           `splat3d render RUN`; eval.json: `splat3d eval RUN`

No other module names these files: they ask a ``RunFolder``. Every file is
written atomically (fileio), so a crash or a full disk never leaves half of
one. ``locked()`` holds the folder's FolderLock; it is re-entrant for one
RunFolder object, so a caller (batch) can hold it around start_run/resume_run.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from splat3d.errors import Splat3dError
from splat3d.io.fileio import AppendLog, FolderLock, atomic_write, ensure_writable_dir
from splat3d.io.media import grid, save_png, save_video
from splat3d.run.checkpoint import list_checkpoints, load_checkpoint, load_newest_checkpoint, save_checkpoint
from splat3d.scene import GaussianScene
from splat3d.scene.ply import read_ply, write_ply


@dataclass
class OutputConfig:
    """What a run writes, and how often."""

    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    preview_every: int = 50
    preview_views: int = 4
    preview_size: int = 128
    final_views: int = 8
    video_frames: int = 48
    video_size: int = 256
    metrics_every: int = 1

    def __post_init__(self):
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise Splat3dError("output.checkpoint_every and output.keep_checkpoints must be at least 1.")


class RunFolder:
    """A run's folder on disk."""

    OUTPUTS = ("checkpoints", "metrics.jsonl", "scene.ply", "config.yaml", "preview.png", "views.png",
               "turntable.mp4", "turntable.gif", "renders", "eval.json")  # fmt: skip
    """What a run writes: all of it, and only it, is cleared by --overwrite."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self._lock: FolderLock | None = None
        self._depth = 0

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------ layout
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def scene_path(self) -> Path:
        return self.path / "scene.ply"

    @property
    def preview_path(self) -> Path:
        return self.path / "preview.png"

    @property
    def views_path(self) -> Path:
        return self.path / "views.png"

    @property
    def renders_dir(self) -> Path:
        return self.path / "renders"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    def is_run(self) -> bool:
        """Whether this looks like a run folder (it has a config.yaml)."""
        return self.config_path.is_file()

    # ------------------------------------------------------ lock, check, clear
    @contextmanager
    def locked(self, command: str = "splat3d generate", hint: str = "or choose another --out") -> Iterator[RunFolder]:
        """Hold the folder's lock (FolderLock) inside this block; nested blocks share it."""
        if self._depth == 0:
            self._lock = FolderLock(self.path, command, hint).acquire()
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._lock.release()
                self._lock = None

    def check_new(self, overwrite: bool) -> None:
        """Refuse a non-empty folder without --overwrite (a file in the way is refused by the lock). Writes nothing."""
        if self.path.is_dir() and any(p.name != FolderLock.NAME for p in self.path.iterdir()) and not overwrite:
            raise Splat3dError(
                f"Run folder {self.path} is not empty; pass --overwrite to replace it, --resume {self.path} to "
                "continue it, or choose another --out."
            )

    def clear(self) -> None:
        """Remove a run's outputs (only those: other files stay) and prove the folder writable."""
        if self.path.is_dir():
            for name in self.OUTPUTS:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        ensure_writable_dir(self.path)

    # ------------------------------------------------------------ metrics
    def open_metrics(self) -> AppendLog:
        """metrics.jsonl for appending, one JSON record per line."""
        return AppendLog(self.metrics_path)

    def trim_metrics(self, step: int) -> None:
        """Drop metric lines past ``step`` (a resume from that step writes them again), and unreadable ones."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write(self.metrics_path, lambda tmp: Path(tmp).write_text("".join(x + "\n" for x in kept)))

    def last_step(self) -> int:
        """The step of the newest metrics line (0 if none)."""
        if not self.metrics_path.is_file():
            return 0
        lines = self.metrics_path.read_text().strip().splitlines()
        try:
            return int(json.loads(lines[-1])["step"]) if lines else 0
        except (ValueError, KeyError, TypeError):
            return 0

    # ------------------------------------------------- config and checkpoints
    def write_config_text(self, text: str) -> None:
        atomic_write(self.config_path, lambda tmp: Path(tmp).write_text(text))

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return list_checkpoints(self.checkpoints_dir)

    def save_checkpoint(self, state: dict, keep: int) -> Path:
        return save_checkpoint(state, self.checkpoints_dir, keep)

    def newest_checkpoint(self, set_aside: bool = False) -> tuple[Path, dict]:
        """The newest checkpoint that loads, and its state (see checkpoint.load_newest_checkpoint)."""
        if not self.checkpoints():
            raise Splat3dError(
                f"{self.path} has no checkpoints to resume from; start a new run with --out {self.path}."
            )
        return load_newest_checkpoint(self.checkpoints_dir, set_aside=set_aside)

    # ------------------------------------------------------------ pictures
    def write_preview(self, frames: Sequence[np.ndarray]) -> None:
        save_png(grid(frames, columns=len(frames)), self.preview_path)

    def write_final(self, scene: GaussianScene, views: Sequence[np.ndarray], turntable: Sequence[np.ndarray]) -> None:
        write_ply(scene, self.scene_path)
        save_png(grid(views, columns=min(4, len(views))), self.views_path)
        save_video(turntable, self.path / "turntable.mp4")  # turntable.gif where no mp4 writer exists

    # --------------------------------------------------------------- scene
    def load_scene(self) -> GaussianScene:
        """scene.ply if the run finished, else the Gaussians of its newest good checkpoint."""
        if self.scene_path.is_file():
            return read_ply(self.scene_path)
        if self.checkpoints():
            return GaussianScene(**self.newest_checkpoint()[1]["params"])
        raise Splat3dError(f"{self.path} holds neither scene.ply nor checkpoints; pass a run folder or a file.")


def load_scene(source: Union[str, Path]) -> GaussianScene:
    """A scene from a run folder (its scene.ply, else its newest checkpoint), a checkpoint (.pt), a .ply,
    or the splats of a .glb (KHR_gaussian_splatting) or .spz."""
    source = Path(source)
    if source.is_dir():
        return RunFolder(source).load_scene()
    if source.suffix == ".pt":
        return GaussianScene(**load_checkpoint(source)["params"])
    if source.suffix.lower() == ".glb":
        from splat3d.scene.gltf import read_glb

        return read_glb(source)
    if source.suffix.lower() == ".spz":
        from splat3d.scene.export import read_spz

        return read_spz(source)
    return read_ply(source)
