"""How l0prune writes files: with the permissions the umask gives, and under a lock where two
runs could write one folder.

The safetensors library writes each file through a temporary file that ``mkstemp`` creates
(mode 0600) and renames into place, so without help every ``.safetensors`` file l0prune wrote
would be readable by its owner alone while the reports beside it follow the umask.
:func:`save_safetensors` is the one way l0prune writes a safetensors file; :func:`follow_umask`
corrects a file written by a library (a Hugging Face ``save_pretrained``).

A write that fails (a full disk above all) raises whatever the writer raises: ``OSError`` from
Python, ``RuntimeError`` from ``torch.save`` (``enforce fail at inline_container.cc``,
``basic_ios::clear``), ``SafetensorError`` from safetensors, most without the file's name.
:func:`writing` turns them into one :class:`WriteError` naming the file, with ``disk full?``
where the error number (``ENOSPC``, ``EDQUOT``) or the free space left says so.

A :class:`FileLock` is an exclusive ``flock`` on a file: the kernel releases it when its process
ends, however it ends (``SIGKILL`` included), so a lock that can be taken marks what a dead run
left behind, and one that cannot marks a run still at work.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from l0prune.validate import first_line

if TYPE_CHECKING:  # torch loads with the function that writes
    import torch

__all__ = ["LOCKING", "FileLock", "WriteError", "follow_umask", "save_safetensors", "umask",
           "writing"]

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

#: Whether this platform has the locks of :class:`FileLock` (``flock``).
LOCKING = fcntl is not None


def umask() -> int:
    """The process's file mode creation mask (read by setting and restoring it).

    Example:
        >>> 0 <= umask() <= 0o777
        True
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give the file ``path`` the mode a new file gets (``0o666`` less the umask).

    Example:
        >>> import tempfile, stat
        >>> with tempfile.NamedTemporaryFile() as f:  # mkstemp: 0600
        ...     follow_umask(f.name)
        ...     stat.S_IMODE(os.stat(f.name).st_mode) == 0o666 & ~umask()
        True
    """
    os.chmod(path, 0o666 & ~umask())


class WriteError(OSError):
    """A file that could not be written, named, in one line (see :func:`writing`).

    Attributes:
        path: the file, as the user knows it.
        reason: what went wrong, with ``(disk full?)`` where the error says so.
    """

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason


#: Below this many free bytes on its file system, a failed write is called a full disk.
_NEARLY_FULL = 1 << 20


def _disk_full(err: BaseException, path: Path) -> bool:
    """Whether ``err`` while writing ``path`` looks like a full disk: by its error number, or
    (errors without one) by the free space left where ``path`` goes."""
    number = getattr(err, "errno", None)
    if number is not None:
        return number in (errno.ENOSPC, errno.EDQUOT)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Run the block that writes ``path``; its failure becomes one :class:`WriteError` naming
    ``path`` (``disk full?`` where the error says so).

    Args:
        path: the file or folder written, as the user knows it (a :class:`WriteError` from an
            inner block is named anew: the outermost block knows the name the user gave).

    Example:
        >>> try:
        ...     with writing("out/model.pt"):
        ...         raise OSError(errno.ENOSPC, "No space left on device")
        ... except WriteError as err:
        ...     print(err)
        cannot write out/model.pt: No space left on device (disk full?)
    """
    from safetensors import SafetensorError

    try:
        yield
    except WriteError as err:
        raise WriteError(Path(path), err.reason) from err.__cause__
    except (OSError, RuntimeError, SafetensorError) as err:
        path = Path(path)
        reason = (err.strerror if isinstance(err, OSError) and err.strerror
                  else first_line(err))
        full = " (disk full?)" if _disk_full(err, path) else ""
        raise WriteError(path, f"{reason}{full}") from err


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, the file then given the mode the umask gives; a
    failure is a :class:`WriteError` naming the file.

    Args:
        tensors: contiguous tensors that share no memory, by name.
        path: the file.
        metadata: text by text, kept in the file's header.

    Example:
        >>> import tempfile, stat, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = os.path.join(d, "w.safetensors")
        ...     save_safetensors({"w": torch.ones(2)}, path)
        ...     stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask()
        True
    """
    from safetensors.torch import save_file

    with writing(path):
        save_file(dict(tensors), str(path), metadata=None if metadata is None else dict(metadata))
    follow_umask(path)


class FileLock:
    """An exclusive lock held through the file ``path`` (``flock``), for one process.

    Where ``fcntl`` is missing (Windows, :data:`LOCKING` false) every lock is granted: there is
    no second run to keep out that this module can see, and a granted lock says nothing about
    whether the file's run is dead.

    Args:
        path: the lock file (created when taken, unless ``create=False``).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = os.path.join(d, ".lock")
        ...     first, second = FileLock(path), FileLock(path)
        ...     first.acquire(), second.acquire(), first.holder() == str(os.getpid())
        ...     first.release(); second.acquire()
        ...     second.release(); os.listdir(d)
        (True, False, True)
        True
        []
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.fd: int | None = None

    def acquire(self, *, wait: bool = False, create: bool = True) -> bool:
        """Take the lock; ``False`` when another process holds it (and ``wait`` is off) or,
        with ``create=False``, when the file is gone.

        The file is then the lock's: it holds this process's id (:meth:`holder`).
        """
        if fcntl is None:
            return True
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            if self._is_at_path(fd):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return True
            os.close(fd)  # removed (and maybe made anew) while it was being taken: again
            if not create:
                return False

    def _is_at_path(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def holder(self) -> str:
        """The process id written in the lock file (by whoever holds it), or ``"?"``."""
        try:
            with open(self.path) as file:
                return file.read(32).strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        """Remove the lock file and let the lock go (removed first, while still held, so that
        no other process takes a lock on a file about to disappear)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None
