"""A state dict in one safetensors file, each pruned weight in its smallest exact layout.

Every floating tensor with two or more dimensions and at least one zero is stored in the smaller
of the layouts of :mod:`l0prune.sparse_layouts` that hold it exactly: the 2:4 layout when every
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
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .sparse_layouts import (
    bitmask_bytes,
    compress_bitmask,
    compress_two_four,
    decompress_bitmask,
    decompress_two_four,
    fits_two_four,
    two_four_bytes,
)
from .targets import Target, prunable_layers

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
    save_file(separate_storage(tensors), str(path), metadata=header)
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


def read_compressed(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a file written by :func:`write_compressed` (dense CPU tensors).

    Args:
        path: the file.

    Returns:
        The state dict, bit for bit as written.

    Raises:
        ValueError: when the file is not in this format or its parts do not fit together.
    """
    try:
        metadata = read_metadata(path)
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{str(path)!r} is not a safetensors file ({err})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not an l0prune compressed file (metadata format "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    if metadata.get("version") != _VERSION:
        raise ValueError(
            f"{str(path)!r} has compressed format version {metadata.get('version')!r}; this "
            f"l0prune reads version {_VERSION}"
        )
    layouts = json.loads(metadata["layouts"])
    state = {}
    with safe_open(str(path), framework="pt") as file:
        keys = set(file.keys())
        for name, entry in layouts.items():
            layout = entry.get("layout")
            if layout not in _PARTS:
                raise ValueError(f"{str(path)!r}: unknown layout {layout!r} of {name!r}")
            wanted = [f"{name}.{part}" for part in _PARTS[layout]] or [name]
            missing = [key for key in wanted if key not in keys]
            if missing:
                raise ValueError(f"{str(path)!r}: {name!r} lacks {missing}")
            if layout == "dense":
                state[name] = file.get_tensor(name)
                continue
            parts = {part: file.get_tensor(f"{name}.{part}") for part in _PARTS[layout]}
            if layout == "bitmask":
                state[name] = decompress_bitmask(parts)
            else:
                state[name] = decompress_two_four(parts, bool(entry.get("transposed")))
    return state
