"""Files l0prune writes get the permissions the umask gives, as ``open`` and ``mkdir`` would.

The safetensors library writes each file through a temporary file that ``mkstemp`` creates
(mode 0600) and renames into place, so without help every ``.safetensors`` file l0prune wrote
would be readable by its owner alone while the reports beside it follow the umask.
:func:`save_safetensors` is the one way l0prune writes a safetensors file; :func:`follow_umask`
corrects a file written by a library (a Hugging Face ``save_pretrained``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the function that writes
    import torch

__all__ = ["follow_umask", "save_safetensors", "umask"]


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


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, the file then given the mode the umask gives.

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

    save_file(dict(tensors), str(path), metadata=None if metadata is None else dict(metadata))
    follow_umask(path)
