"""An output folder that appears whole or not at all, and replaces only what l0prune wrote.

Files are written into a temporary folder next to the destination and renamed into place at the
end; a failed or interrupted run removes it, so no half-written folder is left (a run killed
outright cannot: the next run writing the same output removes what it left, see
:func:`remove_stale`). The folder's
``report.json`` is its manifest: its ``files`` lists every entry the run wrote there and its
``contents`` every file inside those that are folders (a Hugging Face ``model/``). A later run
replaces a folder only when every file and folder in its whole tree is listed there (so a
user's own file is never deleted, however deep); it refuses any other non-empty folder, naming
the first file that is not its own, and refuses the current folder and the folders above it.
The folder is created with the permissions the umask gives, as ``mkdir`` would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from l0prune.io.files import LOCKING, FileLock

from .errors import UsageError

__all__ = ["MARKER", "check_destination", "remove_stale", "staged"]

#: The manifest of an l0prune output folder: its ``files`` names everything a run wrote there.
MARKER = "report.json"
#: The suffix of a staging folder's lock file.
_LOCK = ".lock"


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _manifest(out: Path) -> set[str] | None:
    """The paths ``out/report.json`` lists as written by l0prune, relative to ``out`` (itself
    included; a folder ends in ``/``), or ``None`` when there is no such readable manifest."""
    try:
        report = json.loads((out / MARKER).read_text())
        files, contents = report.get("files"), report.get("contents", [])
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(files, dict) or not (
        isinstance(contents, list) and all(isinstance(c, str) for c in contents)
    ):
        return None
    folders = {f"{parent.as_posix()}/" for c in contents for parent in Path(c).parents
               if parent != Path(".")}
    return set(files) | set(contents) | folders | {MARKER}


def _tree(out: Path) -> list[str]:
    """Every file and folder under ``out``, relative to it, folders ending in ``/``, each
    folder before what it holds."""
    found = []
    for path in sorted(out.rglob("*")):
        found.append(path.relative_to(out).as_posix() + ("/" if path.is_dir() else ""))
    return found


def check_destination(out: Path) -> None:
    """Raise :class:`UsageError` unless ``out`` can become (or replace) an output folder."""
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise UsageError(
            f"--out {out}: is the current folder or one above it, which a run would replace; "
            "give a new folder such as l0prune-run"
        )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    entries = _tree(out) if out.is_dir() else []
    if entries:
        manifest = _manifest(out)
        if manifest is None:
            raise UsageError(
                f"--out {out}: exists, is not empty and holds no {MARKER} listing its files "
                "(not an l0prune output folder); choose another folder"
            )
        unexpected = [name for name in entries if name not in manifest]
        if unexpected:
            raise UsageError(
                f"--out {out}: holds {unexpected[0]}, which no l0prune run wrote there (the "
                f"files of {MARKER}); move it or choose another folder"
            )
    ancestor = _existing_ancestor(out.parent)
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot write in {ancestor}")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary folder to write into; it becomes ``out`` when the block ends without error.

    The folder, ``.OUT.XXXXXXXX/`` next to ``out``, is held by a lock file
    ``.OUT.XXXXXXXX.lock`` for its life; what a killed run left of its own (see
    :func:`remove_stale`) goes first.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     with staged(Path(root) / "run") as folder:
        ...         _ = (folder / MARKER).write_text("{}")
        ...     sorted(p.name for p in Path(root).iterdir())
        ['run']
    """
    check_destination(out)
    remove_stale(out)
    lock, temporary = _new_staging(_existing_ancestor(out.parent), out.name)
    try:
        yield temporary
        check_destination(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _swap(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    finally:
        lock.release()


def _new_staging(where: Path, name: str) -> tuple[FileLock, Path]:
    """A lock file ``.NAME.XXXXXXXX.lock`` in ``where``, taken, and its staging folder
    ``.NAME.XXXXXXXX`` (made with the permissions the umask gives)."""
    while True:
        handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=_LOCK, dir=where)
        os.close(handle)
        lock = FileLock(path)
        lock.acquire(wait=True)
        folder = Path(path[: -len(_LOCK)])
        try:
            folder.mkdir()
        except FileExistsError:
            lock.release()
            continue
        return lock, folder


def _real_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def remove_stale(out: Path) -> list[str]:
    """Remove what runs killed while writing ``out`` left next to it.

    Only l0prune's own staging is touched: a lock file ``.OUT.XXXXXXXX.lock`` (8 characters of
    ``mkstemp``) that no live process holds (the kernel frees a lock when its process dies, even
    by ``SIGKILL``), its folder ``.OUT.XXXXXXXX/`` and the previous output
    ``.OUT.XXXXXXXX.old/OUT`` of a replacement cut short, which goes back to ``OUT`` when
    ``OUT`` is missing. A lock still held is a run at work and stays; where the platform has no
    locks (:data:`~l0prune.io.files.LOCKING`), nothing is removed.

    Args:
        out: the output folder.

    Returns:
        The names of the lock files whose staging was removed.
    """
    if not LOCKING:
        return []
    where = _existing_ancestor(out.parent)
    pattern = re.compile(re.escape(f".{out.name}.") + r"[a-z0-9_]{8}" + re.escape(_LOCK))
    removed = []
    for entry in sorted(where.iterdir()):
        if not pattern.fullmatch(entry.name) or entry.is_symlink() or not entry.is_file():
            continue
        lock = FileLock(entry)
        if not lock.acquire(create=False):  # a run at work (or just gone)
            continue
        try:
            staging = entry.with_name(entry.name[: -len(_LOCK)])
            previous = staging.with_name(f"{staging.name}.old")
            if _real_folder(previous / out.name) and not os.path.lexists(out):
                os.replace(previous / out.name, out)
            for folder in (staging, previous):
                if _real_folder(folder):
                    shutil.rmtree(folder)
        finally:
            lock.release()
        removed.append(entry.name)
    return removed


def _swap(folder: Path, out: Path) -> None:
    """Rename ``folder`` to ``out``, replacing a previous ``out`` (put back if the rename fails;
    moved aside into ``FOLDER.old`` meanwhile, which :func:`remove_stale` knows)."""
    if not out.exists():
        os.replace(folder, out)
        return
    previous = folder.with_name(f"{folder.name}.old")
    previous.mkdir()
    os.replace(out, previous / out.name)
    try:
        os.replace(folder, out)
    except BaseException:
        os.replace(previous / out.name, out)
        previous.rmdir()
        raise
    shutil.rmtree(previous, ignore_errors=True)
