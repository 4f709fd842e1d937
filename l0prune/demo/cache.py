"""Where l0prune keeps what it trains itself (the built-in digits models and language model).

The folder is ``$L0PRUNE_CACHE`` if set, else ``$XDG_CACHE_HOME/l0prune``, else
``~/.cache/l0prune``. Entries are written under a temporary name and renamed into place, so a
concurrent run never reads half an entry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["cache_dir", "publish_folder"]


def cache_dir() -> Path:
    """Where trained built-in models are kept.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"L0PRUNE_CACHE": "/tmp/mine"}):
        ...     str(cache_dir())
        '/tmp/mine'
    """
    if os.environ.get("L0PRUNE_CACHE"):
        return Path(os.environ["L0PRUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "l0prune"


def publish_folder(path: Path, write: Callable[[Path], None]) -> Path:
    """Create the folder ``path`` atomically: ``write(tmp)`` fills a temporary sibling, which is
    then renamed to ``path``. When another process published ``path`` first, its folder is kept
    and ours discarded (both hold the same deterministic content).

    Args:
        path: the folder to create.
        write: ``write(folder)`` writes the entry's files into ``folder``.

    Returns:
        ``path``.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> folder = publish_folder(root / "entry", lambda d: (d / "a.txt").write_text("x"))
        >>> (folder / "a.txt").read_text()
        'x'
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
