"""Checkpoints: the complete state of a run, written atomically, loaded safely.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts,
saved with torch.save and loaded with ``torch.load(weights_only=True)``: no
arbitrary object is ever unpickled. Files are written to a temporary name and
renamed, so a crash (even SIGKILL) never leaves a half-written checkpoint.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Union

import numpy as np
import torch

from splat3d import __version__
from splat3d.errors import Splat3dError
from splat3d.fileio import atomic_write

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


def save_checkpoint(state: dict, folder: Union[str, Path], keep: int) -> Path:
    folder = Path(folder)
    path = checkpoint_path(folder, state["step"])
    payload = {"format": FORMAT, "version": __version__, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
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
        raise Splat3dError(
            f"Checkpoint {path} is corrupt or not a splat3d checkpoint ({reason}); "
            "delete it to resume from the previous one."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "step" not in state:
        raise Splat3dError(
            f"Checkpoint {path} is incompatible (format {state.get('format') if isinstance(state, dict) else '?'}, "
            f"expected {FORMAT}); start a new run or use the splat3d version that wrote it."
        )
    return state


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


def load_scene(source: Union[str, Path]):
    """A scene from a run folder (its scene.ply, else its last checkpoint), a checkpoint (.pt) or a .ply."""
    from splat3d.ply import read_ply
    from splat3d.scene import GaussianScene

    source = Path(source)
    if source.is_dir():
        if (source / "scene.ply").is_file():
            return read_ply(source / "scene.ply")
        if checkpoints := list_checkpoints(source / "checkpoints"):
            return GaussianScene(**load_checkpoint(checkpoints[-1])["params"])
        raise Splat3dError(f"{source} holds neither scene.ply nor checkpoints; pass a run folder or a file.")
    if source.suffix == ".pt":
        return GaussianScene(**load_checkpoint(source)["params"])
    return read_ply(source)
