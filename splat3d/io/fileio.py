"""Files that survive crashes and full disks, and folders with one live writer.

- ``atomic_write``: a reader (or a crash, or a full disk) never sees half a
  file; a write that fails leaves the previous file in place and raises
  ``WriteFailed`` (one sentence naming the path and the cause).
- ``FolderLock``: one live splat3d process per output folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

from splat3d.errors import Splat3dError


class WriteFailed(Splat3dError):
    """A file could not be written (full disk, I/O error, read-only file system); nothing half-written is left."""

    def __init__(self, path: Union[str, Path], reason: str):
        super().__init__(str(path), reason)  # plain args: it pickles across process pools and Ray

    @classmethod
    def from_error(cls, path: Union[str, Path], error: BaseException) -> WriteFailed:
        return cls(path, (error.strerror if isinstance(error, OSError) else None) or str(error) or type(error).__name__)

    def __str__(self) -> str:
        return f"Cannot write {self.args[0]} ({self.args[1]})"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Union[str, Path], directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Union[str, Path], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, flush it to disk, then rename it.

    The temporary file keeps ``path``'s suffix (writers that pick a format by
    extension still work) and ends with the permissions of a normal new file.
    If anything fails, the temporary file is removed and ``path`` keeps its old
    content; an OSError (ENOSPC, EIO, EROFS, ...) becomes ``WriteFailed``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)  # the data is on disk before the name points at it (power loss)
        os.replace(tmp, path)
        tmp = None
        _fsync(path.parent, directory=True)
    except OSError as e:
        raise WriteFailed.from_error(path, e) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


class AppendLog:
    """A file of one record per line (metrics.jsonl) that never ends in half a line.

    Each record is one ``write`` to an O_APPEND descriptor; if it fails or falls
    short (a full disk), the file is cut back to where it was and ``WriteFailed``
    is raised.
    """

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise WriteFailed.from_error(self.path, e) from None

    def append(self, line: str) -> None:
        data = (line + "\n").encode()
        size = os.fstat(self._fd).st_size
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass  # the reader skips a line it cannot parse (resume trims the file)
            raise WriteFailed.from_error(self.path, e) from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


# ------------------------------------------------------------------ locks
class FolderInUse(Splat3dError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """One live splat3d process per folder: an ``fcntl.flock`` on ``FOLDER/.splat3d.lock``.

    The kernel drops an flock when its process dies, however it dies (SIGKILL,
    a crash, power loss), so a lock file left behind is never held: the next
    process takes it over and says so in one line. The file records the
    holder's pid and command for the refusal message; a clean release removes
    it. Use it as a context manager around everything that reads or writes the
    folder's state (checking, clearing, resuming, training).
    """

    NAME = ".splat3d.lock"

    def __init__(self, folder: Union[str, Path], command: str = "splat3d", hint: str = "or choose another --out"):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.command = command
        self.hint = hint
        self.created: list[Path] = []
        self._fd: Optional[int] = None

    def holder(self) -> Optional[dict]:
        """What the lock file says about its holder (or None)."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def _refusal(self) -> FolderInUse:
        # The holder may not have written its record yet (it writes right after locking): then it is unnamed.
        who = self.holder() or {}
        where = f" on {who['host']}" if who.get("host", socket.gethostname()) != socket.gethostname() else ""
        what = f" ({who['command']}{where})" if who.get("command") else ""
        return FolderInUse(
            f"{self.folder} is in use by process {who.get('pid', '?')}{what}; wait for it to finish (or stop it) "
            f"{self.hint}."
        )

    def acquire(self) -> FolderLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise Splat3dError(f"Output path {self.folder} is a file; choose a folder with --out.")
        try:
            # The folders this lock creates (the run folder and any missing parents), to remove if left empty.
            missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
            self.created = missing
            self.folder.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise self._refusal() from None
                # The holder before us may have removed the file between our open and our flock;
                # then we locked an orphan and must lock the file that the name now points at.
                try:
                    if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
        except OSError as e:
            raise Splat3dError(
                f"Cannot write to {self.folder} ({e.strerror or e}); choose a writable folder with --out."
            ) from None
        self._fd = fd
        stale = self.holder()
        if stale and stale.get("pid") != os.getpid():
            warnings.warn(
                f"took over the lock of {self.folder} from process {stale.get('pid', '?')} "
                f"({stale.get('command', 'splat3d')}), which is no longer running.",
                stacklevel=2,
            )
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "since": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except OSError as e:  # a full disk: the flock still holds, the file just cannot say who
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
            for folder in self.created:  # bad input must leave no trace
                if any(folder.iterdir()):
                    break
                folder.rmdir()
        except OSError:
            pass
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def check_free(self) -> None:
        """Raise FolderInUse if a live process holds the folder; takes nothing."""
        if not self.path.exists():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._refusal() from None
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
