"""An output folder that appears whole or not at all.

Files are written into a temporary folder next to the destination and renamed into place at the
end; a failed or interrupted run removes it, so no half-written folder is left. A previous run's
folder (it holds ``report.json``) is replaced; any other non-empty folder is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError

__all__ = ["MARKER", "check_destination", "staged"]

#: The file that marks a folder as an l0prune output (which a new run may replace).
MARKER = "report.json"


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_destination(out: Path) -> None:
    """Raise :class:`UsageError` unless ``out`` can become (or replace) an output folder."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UsageError(
            f"--out {out}: exists, is not empty and holds no {MARKER} (not an l0prune output "
            "folder); choose another folder"
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
