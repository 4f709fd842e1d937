"""An output folder that appears whole or not at all, and replaces only what l0prune wrote.

Files are written into a temporary folder next to the destination and renamed into place at the
end; a failed or interrupted run removes it, so no half-written folder is left. The folder's
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
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from l0prune.io.files import umask

from .errors import UsageError

__all__ = ["MARKER", "check_destination", "staged"]

#: The manifest of an l0prune output folder: its ``files`` names everything a run wrote there.
MARKER = "report.json"


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

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     with staged(Path(root) / "run") as folder:
        ...         _ = (folder / MARKER).write_text("{}")
        ...     sorted(p.name for p in Path(root).iterdir())
        ['run']
    """
    check_destination(out)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_existing_ancestor(out.parent)))
    try:
        temporary.chmod(0o777 & ~umask())  # mkdtemp makes it 0700; a folder follows the umask
        yield temporary
        check_destination(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _swap(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _swap(folder: Path, out: Path) -> None:
    """Rename ``folder`` to ``out``, replacing a previous ``out`` (put back if the rename fails)."""
    if not out.exists():
        os.replace(folder, out)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, previous / out.name)
    try:
        os.replace(folder, out)
    except BaseException:
        os.replace(previous / out.name, out)
        previous.rmdir()
        raise
    shutil.rmtree(previous, ignore_errors=True)
