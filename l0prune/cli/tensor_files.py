"""Reading and writing one tensor: ``.pt`` / ``.pth`` (torch), ``.npy`` (numpy), ``.safetensors``.

A file holding several tensors (a state dict, a safetensors file) is read as ``FILE:KEY``; one
holding a single tensor needs no key. Writes are atomic: a temporary file renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from l0prune.io.files import follow_umask, writing

from .errors import UsageError

__all__ = ["SUFFIXES", "check_output", "load_tensor", "save_tensor"]

# numpy and torch load in the functions that read or write: the command line's help lists
# SUFFIXES without loading them.
if TYPE_CHECKING:
    import torch

SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")


def _suffix(path: Path, label: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"{label} {path}: the file name must end in {', '.join(SUFFIXES)}")
    return suffix


def _safetensors(label: str):
    try:
        import safetensors.torch
    except ImportError:
        raise UsageError(f"{label}: .safetensors files need: pip install safetensors") from None
    return safetensors.torch


def _split(reference: str, label: str) -> tuple[Path, str | None]:
    path = Path(reference)
    if path.is_file():
        return path, None
    head, _, key = reference.rpartition(":")
    if head and Path(head).is_file():
        return Path(head), key
    raise UsageError(f"{label} {reference}: no such file")


def _read(path: Path, suffix: str, label: str):
    import numpy as np
    import torch

    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".safetensors":
        return _safetensors(label).load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _pick(content, key: str | None, where: str):
    import numpy as np
    import torch

    if not isinstance(content, Mapping):
        if key is not None:
            raise UsageError(f"{where}: holds one array, not named ones; drop :{key}")
        return content
    tensors = {k: v for k, v in content.items() if isinstance(v, (torch.Tensor, np.ndarray))}
    if key is not None:
        if key not in tensors:
            raise UsageError(f"{where}: no tensor named {key!r} (it holds {_names(tensors)})")
        return tensors[key]
    if len(tensors) != 1:
        raise UsageError(
            f"{where}: holds {len(tensors)} tensors ({_names(tensors)}); name one as FILE:KEY"
        )
    return next(iter(tensors.values()))


def _names(tensors: Mapping) -> str:
    names = list(tensors)
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "none"


def load_tensor(reference: str, label: str) -> torch.Tensor:
    """The tensor named by ``reference`` (``FILE`` or ``FILE:KEY``), as a CPU tensor.

    Args:
        reference: the file, with ``:KEY`` when it holds several tensors.
        label: the flag, for messages.

    Returns:
        The tensor.

    Raises:
        UsageError: a missing file, an unknown suffix or key, or a file that does not read.
    """
    import numpy as np
    import torch

    path, key = _split(reference, label)
    where = f"{label} {reference}"
    try:
        content = _read(path, _suffix(path, label), label)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"{where}: cannot read it ({type(err).__name__}: {err})") from None
    value = _pick(content, key, where)
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.number):
            raise UsageError(f"{where}: holds {value.dtype} data, not numbers")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise UsageError(f"{where}: holds a {type(value).__name__}, not a tensor")
    return value


def check_output(path: Path, label: str, dtype: torch.dtype | None = None) -> None:
    """Raise :class:`UsageError` unless a tensor (of ``dtype``, when given) can be written to
    ``path``: numpy, so ``.npy``, has no bfloat16."""
    suffix = _suffix(path, label)
    if suffix == ".npy" and dtype is not None and str(dtype) == "torch.bfloat16":
        raise UsageError(f"{label} {path}: numpy (.npy) has no bfloat16, the dtype of this W "
                         "and of its solution; give a .pt or .safetensors file")
    if path.is_dir():
        raise UsageError(f"{label} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"{label} {path}: no such folder {path.parent}")
    if path.suffix.lower() == ".safetensors":
        _safetensors(label)


def save_tensor(tensor: torch.Tensor, path: Path, label: str, key: str = "weight") -> None:
    """Write ``tensor`` to ``path`` in the format of its suffix (a safetensors file names it
    ``key``), atomically."""
    import numpy as np
    import torch

    check_output(path, label, tensor.dtype)
    suffix = path.suffix.lower()
    tensor = tensor.detach().cpu().contiguous()
    payload = _safetensors(label).save({key: tensor}) if suffix == ".safetensors" else None
    with writing(path), tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                                    delete=False) as f:
        try:
            if payload is not None:
                f.write(payload)
            elif suffix == ".npy":
                np.save(f, tensor.numpy())
            else:
                torch.save(tensor, f)
            f.flush()
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    follow_umask(f.name)  # a temporary file is 0600; the output follows the umask
    os.replace(f.name, path)
