"""Exporting a pruned model: a dense state dict with pruning made permanent, and a compact file.

- The *dense file* is ``torch.save`` of :func:`~l0prune.model.masks.permanent_state_dict`: keys
  equal those of the dense model, so ``dense_model.load_state_dict(torch.load(path))`` works.
- The *sparse file* stores each tensor in the smallest of three encodings: ``dense`` (the
  values), ``bitmask`` (one bit per entry, packed eight to a byte, plus the non-zero values in
  order) or ``indices`` (int32 / int64 flat indices of the non-zeros plus their values; not for
  a tensor so nearly zero that it would shrink over 1024 times). Its size is about
  ``numel / 8 + nnz * itemsize`` bytes for a pruned weight, so it shrinks with the density.
  :func:`load_sparse` checks it and reads it back to the same tensors, bit for bit.

The suffix of each path decides its format: ``.pt`` / ``.pth`` / ``.bin`` a torch pickle (both
files load with ``torch.load(..., weights_only=True)``), ``.safetensors`` safetensors (the dense
file loads with ``safetensors.torch.load_file``; the compact one holds each pruned weight in the
bitmask or 2:4 layout of :mod:`l0prune.io.compressed_file`). Any other suffix is refused.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from l0prune.model.masks import permanent_state_dict

from .compressed_file import (
    read_compressed,
    separate_storage,
    transposed_weights,
    write_compressed,
)
from .files import save_safetensors, writing

__all__ = ["ExportReport", "TensorExport", "export", "load_sparse"]

_FORMAT = "l0prune-sparse"
_VERSION = 1
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
#: A sparse file may decode to at most this many times its own size, plus :data:`_SLACK` bytes:
#: far above what :func:`export` writes (it stores every tensor in at least 1 / _AMPLIFICATION
#: of its bytes), far below what a crafted header declaring a huge all-zero shape would make
#: :func:`load_sparse` allocate.
_AMPLIFICATION = 1024
_SLACK = 64 << 20


@dataclass
class TensorExport:
    """How one tensor was stored in the sparse file.

    Attributes:
        name: state dict key.
        shape: its shape.
        nonzero: non-zero entries.
        encoding: ``"dense"``, ``"bitmask"`` or ``"indices"`` (a torch file); ``"dense"``,
            ``"bitmask"`` or ``"2:4"`` (a safetensors file).
        bytes: payload bytes (values plus mask or indices).
    """

    name: str
    shape: list[int]
    nonzero: int
    encoding: str
    bytes: int


@dataclass
class ExportReport:
    """The files :func:`export` wrote and their sizes.

    Attributes:
        path: the dense state dict file.
        sparse_path: the compact file.
        dense_bytes: size of the dense file.
        sparse_bytes: size of the compact file.
        tensors: per tensor, its encoding in the compact file.
    """

    path: str
    sparse_path: str
    dense_bytes: int
    sparse_bytes: int
    tensors: list[TensorExport]

    @property
    def ratio(self) -> float:
        """``sparse_bytes / dense_bytes``."""
        return self.sparse_bytes / self.dense_bytes

    def __str__(self) -> str:
        return (
            f"dense state dict: {self.path} ({self.dense_bytes:,} bytes)\n"
            f"sparse file: {self.sparse_path} ({self.sparse_bytes:,} bytes, "
            f"{100 * self.ratio:.1f} % of dense)"
        )


def _pack(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1)
    padded = torch.zeros(math.ceil(flat.numel() / 8) * 8, dtype=torch.uint8)
    padded[: flat.numel()] = flat
    return (padded.reshape(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)


def _unpack(bits: torch.Tensor, numel: int) -> torch.Tensor:
    return ((bits.reshape(-1, 1) & _BITS) != 0).reshape(-1)[:numel]


def _encode(tensor: torch.Tensor) -> dict:
    tensor = tensor.detach().cpu()
    numel, item = tensor.numel(), tensor.element_size()
    if not tensor.is_floating_point() or numel == 0:
        return {"encoding": "dense", "values": tensor.clone()}
    nonzero = tensor != 0
    nnz = int(nonzero.sum())
    index_dtype = torch.int32 if numel < 2**31 else torch.int64
    index_bytes = torch.empty((), dtype=index_dtype).element_size()
    sizes = {
        "dense": numel * item,
        "bitmask": math.ceil(numel / 8) + nnz * item,
        "indices": nnz * (index_bytes + item),
    }
    if sizes["indices"] * _AMPLIFICATION < numel * item:  # nearly all zero: what load_sparse
        del sizes["indices"]  # accepts is bounded by the file's size, so a bitmask it is
    encoding = min(sizes, key=sizes.get)
    if encoding == "dense":
        return {"encoding": "dense", "values": tensor.clone()}
    entry = {"encoding": encoding, "shape": list(tensor.shape), "values": tensor[nonzero]}
    if encoding == "bitmask":
        entry["bits"] = _pack(nonzero)
    else:
        entry["indices"] = nonzero.reshape(-1).nonzero().reshape(-1).to(index_dtype)
    return entry


def _decode(entry: dict) -> torch.Tensor:
    """The tensor of a checked entry (:func:`_check_stored`, :func:`_check_values`)."""
    if entry["encoding"] == "dense":
        return entry["values"]
    values, shape = entry["values"], entry["shape"]
    numel = math.prod(shape)
    out = torch.zeros(numel, dtype=values.dtype)
    if entry["encoding"] == "bitmask":
        out[_unpack(entry["bits"], numel)] = values
    else:
        out[entry["indices"].long()] = values
    return out.reshape(shape)


def _check_stored(entry, name: str, where: str) -> int:
    """Raise ``ValueError`` unless ``entry``'s parts have the types and sizes of one encoded
    tensor whose data the file really holds; return the bytes it decodes to.

    Only sizes are compared here, nothing of the declared size is allocated: an expanded
    (stride-0) tensor survives ``torch.load(weights_only=True)`` and would make a tiny file
    unpack to gigabytes, so every part must be contiguous over storage of its own size.
    """
    bad = f"{where}: tensor {name!r}"
    if not isinstance(entry, dict) or entry.get("encoding") not in ("dense", "bitmask",
                                                                     "indices"):
        raise ValueError(f"{bad} has no known encoding (dense, bitmask or indices)")
    parts = {"dense": ("values",), "bitmask": ("values", "bits"),
             "indices": ("values", "indices")}[entry["encoding"]]
    for part in parts:
        value = entry.get(part)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{bad}: {part} must be a tensor, got {type(value).__name__}")
        if value.numel() and not (
            value.is_contiguous()
            and value.untyped_storage().nbytes() >= value.numel() * value.element_size()
        ):
            raise ValueError(f"{bad}: {part} is a view ({_describe(value)}, strides "
                             f"{value.stride()}) whose data the file does not hold")
    values = entry["values"]
    if entry["encoding"] == "dense":
        return values.numel() * values.element_size()
    shape = entry.get("shape")
    if not (isinstance(shape, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    )):
        raise ValueError(f"{bad}: shape must be a list of non-negative integers, got {shape!r}")
    if values.ndim != 1 or not values.is_floating_point():
        raise ValueError(f"{bad}: values must be a 1-D floating tensor, got {values.dtype} "
                         f"of shape {tuple(values.shape)}")
    numel = math.prod(shape)
    if entry["encoding"] == "bitmask":
        bits = entry["bits"]
        if not (bits.dtype == torch.uint8 and bits.ndim == 1
                and bits.numel() == math.ceil(numel / 8)):
            raise ValueError(f"{bad}: shape {shape} needs {math.ceil(numel / 8)} mask bytes, "
                             f"the file holds {_describe(bits)}")
    else:
        indices = entry["indices"]
        if not (indices.dtype in (torch.int32, torch.int64) and indices.shape == values.shape):
            raise ValueError(f"{bad}: indices must be an int32 / int64 tensor of its "
                             f"{values.numel()} values' length, the file holds "
                             f"{_describe(indices)}")
    return numel * values.element_size()


def _check_values(entry: dict, name: str, where: str) -> None:
    """Raise ``ValueError`` unless the mask or indices of a sized-checked ``entry``
    (:func:`_check_stored`) mark exactly its values, in range and in order. Allocates at most
    eight bytes per stored mask byte or index."""
    bad = f"{where}: tensor {name!r}"
    values, numel = entry["values"], math.prod(entry.get("shape", []))
    if entry["encoding"] == "bitmask":
        bits = entry["bits"]
        kept = int(_unpack(bits, numel).sum())
        if kept != values.numel() or int(_unpack(bits, bits.numel() * 8).sum()) != kept:
            raise ValueError(f"{bad}: its mask marks {kept} entries of {numel} for "
                             f"{values.numel()} values")
    elif entry["encoding"] == "indices":
        indices = entry["indices"]
        if indices.numel() and (int(indices[0]) < 0 or int(indices[-1]) >= numel
                                or not bool((indices[1:] > indices[:-1]).all())):
            raise ValueError(f"{bad}: indices must increase within [0, {numel}) for shape "
                             f"{entry['shape']}")


def _check_archive(path: Path, where: str) -> None:
    """Raise ``ValueError`` unless ``path`` is a torch zip archive whose members, unpacked, are
    no larger than the file (``torch.save`` stores them uncompressed): a deflated member could
    otherwise unpack to any size inside ``torch.load``."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{where} is not a torch zip archive ({err})") from None
    if unpacked > path.stat().st_size:
        raise ValueError(f"{where} unpacks to {unpacked:,} bytes, more than its "
                         f"{path.stat().st_size:,}: not a file export wrote")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _payload(entry: dict) -> int:
    return sum(
        v.numel() * v.element_size() for v in entry.values() if isinstance(v, torch.Tensor)
    )


_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def _file_format(path: Path, name: str) -> str:
    """``"safetensors"`` or ``"torch"``, from the suffix of ``path``."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    raise ValueError(
        f"{name} must end in .safetensors (safetensors) or {' / '.join(_TORCH_SUFFIXES)} (a "
        f"torch pickle), got {str(path)!r}"
    )


def export(
    model: nn.Module, path: str | Path, sparse_path: str | Path | None = None
) -> ExportReport:
    """Write ``model``'s weights with pruning made permanent, densely and compactly.

    The model is not changed.

    Args:
        model: a model, pruned the ``torch.nn.utils.prune`` way or not.
        path: the dense state dict file (keys as in the dense model); its suffix picks the
            format: ``.safetensors``, or ``.pt`` / ``.pth`` / ``.bin`` for a torch pickle.
        sparse_path: the compact file; default: ``path`` with ``.sparse`` before its suffix.
            Its suffix picks its format in the same way.

    Returns:
        An :class:`ExportReport` with both sizes.

    Example:
        >>> import tempfile, os
        >>> from l0prune.model.masks import attach
        >>> layer = nn.Linear(64, 64)
        >>> attach(layer, layer.weight.detach(), torch.rand(64, 64) < 0.1)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     report = export(layer, os.path.join(d, "layer.pt"))
        >>> report.sparse_bytes < report.dense_bytes
        True
    """
    path = Path(path)
    sparse_path = Path(sparse_path) if sparse_path is not None else path.with_name(
        f"{path.stem}.sparse{path.suffix}"
    )
    dense_format = _file_format(path, "path")
    sparse_format = _file_format(sparse_path, "sparse_path")
    if sparse_path == path:
        raise ValueError(f"sparse_path must differ from path, both are {str(path)!r}")
    state = {k: v.detach().cpu() for k, v in permanent_state_dict(model).items()}
    if dense_format == "safetensors":
        save_safetensors(separate_storage(state), path, {"format": "pt"})
    else:
        with writing(path):
            torch.save(state, path)
    if sparse_format == "safetensors":
        tensors = [
            TensorExport(t.name, t.shape, t.nonzero, t.layout, t.bytes)
            for t in write_compressed(state, sparse_path, transposed_weights(model))
        ]
    else:
        entries = {name: _encode(tensor) for name, tensor in state.items()}
        with writing(sparse_path):
            torch.save({"format": _FORMAT, "version": _VERSION, "tensors": entries}, sparse_path)
        tensors = [
            TensorExport(
                name, list(state[name].shape), int((state[name] != 0).sum()), entry["encoding"],
                _payload(entry),
            )
            for name, entry in entries.items()
        ]
    return ExportReport(
        str(path), str(sparse_path), path.stat().st_size, sparse_path.stat().st_size, tensors
    )


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in a sparse file written by :func:`export` (CPU tensors).

    The file is checked before anything of a declared size is allocated: an archive that
    unpacks to no more than its size, each entry's encoding, types, parts that are real data
    (no expanded views), shape against its mask or indices, a total no larger than 1024 times
    the file plus 64 MiB (the compact encodings cannot shrink a real tensor further), then the
    masks and index ranges.

    Args:
        path: the sparse file (a ``.safetensors`` one is read as safetensors).

    Returns:
        The dense state dict, equal to the one in the dense file.

    Raises:
        ValueError: the file is not a consistent sparse file of this version.

    Example:
        >>> import tempfile, os
        >>> layer = nn.Linear(4, 4)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = export(layer, os.path.join(d, "l.pt"))
        ...     state = load_sparse(os.path.join(d, "l.sparse.pt"))
        >>> torch.equal(state["weight"], layer.weight.detach())
        True
    """
    if Path(path).suffix.lower() == ".safetensors":
        return read_compressed(path)
    path = Path(path)
    where = repr(str(path))
    _check_archive(path, where)
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{where} is not an l0prune sparse file")
    if data.get("version") != _VERSION:
        raise ValueError(
            f"{where} has sparse format version {data.get('version')!r}; "
            f"this l0prune reads version {_VERSION}"
        )
    tensors = data.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors):
        raise ValueError(f"{where}: its tensors must be a dict by name")
    total = sum(_check_stored(entry, name, where) for name, entry in tensors.items())
    limit = _AMPLIFICATION * path.stat().st_size + _SLACK
    if total > limit:
        raise ValueError(
            f"{where} declares {total:,} bytes of tensors, more than {_AMPLIFICATION} x its "
            f"size plus {_SLACK >> 20} MiB ({limit:,} bytes): not a file export wrote"
        )
    for name, entry in tensors.items():
        _check_values(entry, name, where)
    return {name: _decode(entry) for name, entry in tensors.items()}
