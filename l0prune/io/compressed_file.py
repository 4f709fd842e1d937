"""A state dict in one safetensors file, each pruned weight in its smallest exact layout.

Every floating tensor with two or more dimensions and at least one zero is stored in the smaller
of the layouts of :mod:`l0prune.io.sparse_layouts` that hold it exactly: the 2:4 layout when every
group of four inputs holds at most two non-zeros (a weight pruned with ``NM(2, 4)``), else the
bitmask, unless the dense tensor is smaller. Under the tensor's name ``W`` the file holds
``W.shape``, ``W.compressed`` and ``W.bitmask`` / ``W.row_offsets`` (bitmask) or ``W.indices``
(2:4) — the key names of compressed-tensors' former ``sparse-bitmask`` format — and every other
tensor as it is under its own name. The file's metadata names the format and, per tensor, its
layout and whether the 2:4 layout is of the transpose (Hugging Face ``Conv1D``, stored
``in x out``).

Tensors that share storage (tied weights) are written apart, each under its name (callers that
re-tie them on load, as Hugging Face models do, pass one name per group).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from l0prune.model.targets import Target, prunable_layers

from .files import save_safetensors
from .sparse_layouts import (
    bitmask_bytes,
    compress_bitmask,
    compress_two_four,
    decompress_bitmask,
    decompress_two_four,
    fits_two_four,
    two_four_bytes,
)

__all__ = [
    "FORMAT",
    "StoredTensor",
    "read_compressed",
    "read_metadata",
    "separate_storage",
    "transposed_weights",
    "write_compressed",
]

#: The ``format`` entry of the file's metadata.
FORMAT = "l0prune-sparse-bitmask"
_VERSION = "1"
_PARTS = {
    "bitmask": ("shape", "compressed", "bitmask", "row_offsets"),
    "2:4": ("shape", "compressed", "indices"),
    "dense": (),
}


@dataclass
class StoredTensor:
    """How one tensor was written.

    Attributes:
        name: its state dict key.
        shape: its dense shape.
        nonzero: its non-zero entries.
        layout: ``"bitmask"``, ``"2:4"`` or ``"dense"``.
        bytes: payload bytes written for it.
    """

    name: str
    shape: list[int]
    nonzero: int
    layout: str
    bytes: int


def _layout(tensor: torch.Tensor, transposed: bool) -> str:
    if not tensor.is_floating_point() or tensor.ndim < 2 or tensor.numel() == 0:
        return "dense"
    if bool((tensor != 0).all()):
        return "dense"
    sizes = {"dense": tensor.numel() * tensor.element_size(), "bitmask": bitmask_bytes(tensor)}
    if fits_two_four(tensor, transposed):
        sizes["2:4"] = two_four_bytes(tensor)
    return min(sizes, key=sizes.get)


def separate_storage(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as contiguous tensors that share no memory (safetensors refuses shared memory):
    a tensor whose storage an earlier one uses (a tied weight) is copied.

    Example:
        >>> w = torch.ones(2, 2)
        >>> out = separate_storage({"a": w, "b": w})
        >>> out["a"] is w, torch.equal(out["b"], w), out["b"].data_ptr() != w.data_ptr()
        (True, True, True)
    """
    storages, out = set(), {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr()
        shared = tensor.numel() > 0 and storage in storages
        storages.add(storage)
        out[name] = tensor.clone(memory_format=torch.contiguous_format) if shared \
            else tensor.contiguous()
    return out


def transposed_weights(model: nn.Module) -> set[str]:
    """Names of the weights ``model`` stores ``in x out`` (Hugging Face ``Conv1D``).

    Example:
        >>> transposed_weights(nn.Sequential(nn.Linear(2, 2)))
        set()
    """
    return {
        f"{name}.weight" for name, module in prunable_layers(model).items()
        if Target(name, module).is_transposed
    }


def write_compressed(
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    transposed: Collection[str] = (),
    metadata: Mapping[str, str] | None = None,
) -> list[StoredTensor]:
    """Write ``state`` to the safetensors file ``path``, pruned weights compactly.

    Args:
        state: a state dict (pruning made permanent: plain tensors with zeros).
        path: the file to write.
        transposed: names of weights stored ``in x out`` (Hugging Face ``Conv1D``): their 2:4
            layout is of the transpose, where the groups of four inputs lie.
        metadata: more string entries for the file's metadata.

    Returns:
        One :class:`StoredTensor` per tensor written.

    Example:
        >>> import tempfile, os
        >>> weight = torch.randn(8, 64) * (torch.rand(8, 64) < 0.1)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     stored = write_compressed({"w": weight}, os.path.join(d, "w.safetensors"))
        ...     back = read_compressed(os.path.join(d, "w.safetensors"))
        >>> stored[0].layout, torch.equal(back["w"], weight)
        ('bitmask', True)
    """
    tensors: dict[str, torch.Tensor] = {}
    layouts: dict[str, dict] = {}
    stored = []
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        flip = name in transposed
        layout = _layout(tensor, flip)
        if layout == "dense":
            parts = {"": tensor}
        elif layout == "bitmask":
            parts = compress_bitmask(tensor)
        else:
            parts = compress_two_four(tensor, flip)
        for part, value in parts.items():
            tensors[f"{name}.{part}" if part else name] = value
        layouts[name] = {"layout": layout, "transposed": flip and layout == "2:4"}
        stored.append(StoredTensor(
            name, list(tensor.shape), int((tensor != 0).sum()), layout,
            sum(v.numel() * v.element_size() for v in parts.values()),
        ))
    header = {"format": FORMAT, "version": _VERSION, "layouts": json.dumps(layouts)}
    header.update(metadata or {})
    save_safetensors(separate_storage(tensors), path, header)
    return stored


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (empty when it has none).

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_compressed({"b": torch.ones(2)}, os.path.join(d, "f.safetensors"))
        ...     read_metadata(os.path.join(d, "f.safetensors"))["format"]
        'l0prune-sparse-bitmask'
    """
    with safe_open(str(path), framework="pt") as file:
        return dict(file.metadata() or {})


#: The most dimensions a stored ``shape`` may have.
_MAX_DIMS = 8


def read_compressed(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a file written by :func:`write_compressed` (dense CPU tensors).

    Everything is checked from the file's header before a tensor of a declared size is built:
    the metadata, and every tensor's parts (present, of the layout's dtypes, of shapes that fit
    its declared shape). A declared shape is thereby backed by the file: a bitmask byte stands
    for eight entries of at most eight bytes, a 2:4 pair of values for four entries, so the
    state dict is at most 64 times the file's size.

    Args:
        path: the file.

    Returns:
        The state dict, bit for bit as written.

    Raises:
        ValueError: when the file is not in this format or its parts do not fit together.
    """
    where = repr(str(path))
    try:
        metadata = read_metadata(path)
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{where} is not a safetensors file ({err})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{where} is not an l0prune compressed file (metadata format "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    if metadata.get("version") != _VERSION:
        raise ValueError(
            f"{where} has compressed format version {metadata.get('version')!r}; this "
            f"l0prune reads version {_VERSION}"
        )
    layouts = _layouts(metadata, where)
    with safe_open(str(path), framework="pt") as file:
        for name, entry in layouts.items():
            _check_parts(file, name, entry, where)
        state = {}
        for name, entry in layouts.items():
            layout = entry["layout"]
            if layout == "dense":
                state[name] = file.get_tensor(name)
                continue
            parts = {part: file.get_tensor(f"{name}.{part}") for part in _PARTS[layout]}
            try:
                if layout == "bitmask":
                    state[name] = decompress_bitmask(parts)
                else:
                    state[name] = decompress_two_four(parts, entry["transposed"])
            except ValueError as err:
                raise ValueError(f"{where}: {name!r}: {err}") from None
    return state


def _layouts(metadata: Mapping[str, str], where: str) -> dict[str, dict]:
    """The file's per-tensor layouts, checked to be ``{name: {"layout", "transposed"}}``."""
    try:
        layouts = json.loads(metadata["layouts"])
    except (KeyError, ValueError):
        raise ValueError(f"{where}: its metadata has no readable 'layouts' entry") from None
    if not isinstance(layouts, dict):
        raise ValueError(f"{where}: its metadata 'layouts' must map names to layouts")
    for name, entry in layouts.items():
        if not (isinstance(entry, dict) and entry.get("layout") in _PARTS
                and isinstance(entry.get("transposed", False), bool)):
            raise ValueError(f"{where}: unknown layout {entry!r} of {name!r}")
        entry.setdefault("transposed", False)
    return layouts


def _check_parts(file, name: str, entry: Mapping, where: str) -> None:
    """Raise ``ValueError`` unless the parts of ``name`` (stored as ``entry`` says) are in the
    file with the layout's dtypes and shapes that fit its declared shape (read from the header
    and the tiny ``shape`` part alone)."""
    layout = entry["layout"]
    keys = set(file.keys())
    wanted = [f"{name}.{part}" for part in _PARTS[layout]] or [name]
    missing = [key for key in wanted if key not in keys]
    if missing:
        raise ValueError(f"{where}: {name!r} lacks {missing}")
    if layout == "dense":
        return
    declared = file.get_slice(f"{name}.shape")
    if declared.get_dtype() != "I64" or len(declared.get_shape()) != 1 or not (
        1 <= declared.get_shape()[0] <= _MAX_DIMS
    ):
        raise ValueError(f"{where}: {name}.shape must hold 1 to {_MAX_DIMS} int64 sizes")
    shape = [int(n) for n in file.get_tensor(f"{name}.shape").tolist()]
    if any(n < 0 for n in shape) or (entry["transposed"] and len(shape) != 2):
        raise ValueError(f"{where}: {name!r} has an impossible shape {shape}")
    rows, cols = (shape[1], shape[0]) if entry["transposed"] else (shape[0],
                                                                    math.prod(shape[1:]))
    expected = {
        "bitmask": {"bitmask": [rows, math.ceil(cols / 8)]},
        "2:4": {"compressed": [rows, cols // 2], "indices": [rows, math.ceil(cols / 8)]},
    }[layout]
    for part, size in expected.items():
        found = list(file.get_slice(f"{name}.{part}").get_shape())
        if found != size or (part != "compressed" and file.get_slice(
            f"{name}.{part}"
        ).get_dtype() != "U8"):
            raise ValueError(f"{where}: {name}.{part} of shape {found} does not fit a tensor "
                             f"of shape {shape} in the {layout} layout")
    values = file.get_slice(f"{name}.compressed")
    if values.get_dtype() not in _FLOATS or (layout == "bitmask" and (
        len(values.get_shape()) != 1 or values.get_shape()[0] > rows * cols
    )):
        raise ValueError(f"{where}: {name}.compressed ({values.get_dtype()}, shape "
                         f"{values.get_shape()}) cannot be the values of a tensor of shape "
                         f"{shape}")


#: safetensors' names of the floating dtypes.
_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
