"""Checkpoints: the complete state of a run, written atomically, loaded safely.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts,
saved with torch.save and loaded with ``torch.load(weights_only=True)``: no
arbitrary object is ever unpickled. Files are written to a temporary name and
renamed, so a crash (even SIGKILL) or a full disk never leaves a half-written
checkpoint; one damaged some other way is set aside by
``load_newest_checkpoint`` and the one before it is used.
"""

from __future__ import annotations

import io
import random
import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch

from splat3d import __version__
from splat3d.errors import Splat3dError
from splat3d.io.fileio import atomic_write

FORMAT = 1
_NAME = re.compile(r"^step_(\d{6,})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:06d}.pt"


def list_checkpoints(folder: Union[str, Path]) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


class CorruptCheckpoint(Splat3dError):
    """A checkpoint file that cannot be read (truncated, damaged, not a checkpoint)."""


def save_torch(obj, path: Union[str, Path]) -> Path:
    """torch.save, atomically. The object is serialised in memory and written as plain bytes: torch's
    own file writer reports a full disk as an opaque RuntimeError, Python's I/O as OSError(ENOSPC),
    which atomic_write turns into WriteFailed."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


def save_checkpoint(state: dict, folder: Union[str, Path], keep: int) -> Path:
    folder = Path(folder)
    path = checkpoint_path(folder, state["step"])
    save_torch({"format": FORMAT, "version": __version__, **state}, path)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Union[str, Path]) -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise Splat3dError(f"Checkpoint {path} does not exist; check the run folder.") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip/pickle fails in many ways
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CorruptCheckpoint(
            f"Checkpoint {path} is corrupt or not a splat3d checkpoint ({reason}); "
            "use an earlier checkpoint, or start a new run."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "step" not in state:
        raise Splat3dError(
            f"Checkpoint {path} is incompatible (format {state.get('format') if isinstance(state, dict) else '?'}, "
            f"expected {FORMAT}); start a new run or use the splat3d version that wrote it."
        )
    return state


def load_newest_checkpoint(folder: Union[str, Path], set_aside: bool = False) -> tuple[Path, dict]:
    """The newest checkpoint in ``folder`` that loads, and its state.

    A newer one that is corrupt is named in a warning; with ``set_aside`` (a
    resume, which will write new checkpoints) it is also renamed to
    ``NAME.corrupt`` so it is never read again. If none loads, the newest one's
    error is raised and nothing is renamed.
    """
    checkpoints = list_checkpoints(folder)
    assert checkpoints, f"{folder} has no checkpoints; callers check first and say what to do"
    first_error = None
    for path in reversed(checkpoints):
        try:
            state = load_checkpoint(path)
        except CorruptCheckpoint as e:
            first_error = first_error or e
            continue
        for bad in checkpoints[checkpoints.index(path) + 1 :]:
            kept = bad.with_name(bad.name + ".corrupt")
            if set_aside:
                bad.replace(kept)
            warnings.warn(
                f"checkpoint {bad} is corrupt" + (f" (kept as {kept.name})" if set_aside else "")
                + f"; using {path.name} (step {state['step']}) instead.",
                stacklevel=2,
            )  # fmt: skip
        return path, state
    raise first_error


# ------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """torch, numpy and python RNG states as weights_only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },  # fmt: skip
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"],
         np_state["cached"])
    )  # fmt: skip
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
