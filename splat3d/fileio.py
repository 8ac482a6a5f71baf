"""Atomic file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Union

from splat3d.errors import Splat3dError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Union[str, Path], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it.

    The temporary file keeps ``path``'s suffix (writers that pick a format by
    extension still work) and ends with the permissions of a normal new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ensure_writable_dir(path: Union[str, Path]) -> Path:
    """Create ``path`` if needed and prove it writable, or raise one clear sentence."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".splat3d-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or e
        raise Splat3dError(f"Cannot write to {path} ({reason}); choose a writable folder with --out.") from None
    return path


def slug(text: str) -> str:
    """A folder name for a prompt: "A red cube!" -> "a-red-cube"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "run"
