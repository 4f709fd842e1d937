"""compressed-tensors' sparse checkpoints, written and read as its 0.13 release does.

compressed-tensors (the checkpoint format of llm-compressor and vLLM) stored sparse weights in
two formats until its 0.14 release dropped them; checkpoints in them are on the model hubs. A
folder holds:

- ``config.json`` with ``quantization_config = {"quant_method": "compressed-tensors",
  "version": "0.13.0", "sparsity_config": {...}, "transform_config": {}}``. The
  ``sparsity_config`` names the ``format`` (``"sparse-bitmask"``, ``"sparse-24-bitmask"`` or
  ``"dense"``), the ``targets`` whose weights are compressed (module names, class names or
  ``re:`` regexes) less those of ``ignore``, the ``global_sparsity`` and the
  ``sparsity_structure``;
- the weights in ``model.safetensors``, or in shards listed by
  ``model.safetensors.index.json`` (``weight_map``: tensor name -> file).

A compressed weight ``NAME.weight`` is stored under its module's name ``NAME``:

- ``sparse-bitmask``: ``NAME.shape`` (int64, the dense shape), ``NAME.compressed`` (the
  non-zero values, row-major, 1-D), ``NAME.bitmask`` (uint8: the last dimension packed eight
  entries to a byte, least significant bit first) and ``NAME.row_offsets`` (int64, where each
  row's values start in ``compressed``; not needed to decode);
- ``sparse-24-bitmask`` (2-D weights whose every group of four consecutive entries of a row
  holds at most two non-zeros): ``NAME.shape`` (int64, ``2 x 1``), ``NAME.compressed``
  (``rows x cols / 2``: the entries the mask marks, row-major) and ``NAME.bitmask`` (as above,
  two bits set in every group of four).

Every other tensor is stored as it is, under its own name.

What :func:`write_folder` compresses: the 2-D weights of the prunable layers it is given
(``Linear``, ``Conv1D``; a convolution's 4-D weight stays dense) that hold zeros and take
fewer bytes compressed. When every one of them fits the 2:4 layout along its stored rows, the
format is ``sparse-24-bitmask`` (the one vLLM runs with 2:4 kernels), else ``sparse-bitmask``.
A Hugging Face ``Conv1D`` (GPT-2) stores ``in x out``, so its 2:4 groups of inputs lie down its
columns and it is written in ``sparse-bitmask``. The ``targets`` are the compressed modules'
names, ``ignore`` is empty, and ``global_sparsity`` is the fraction of zeros over the
compressed weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .compressed_file import StoredTensor, separate_storage
from .sparse_layouts import bitmask_bytes, fits_two_four, pack_bits, two_four_mask, unpack_bits

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "FORMATS",
    "INDEX_NAME",
    "LAYOUT_VERSION",
    "WEIGHTS_NAME",
    "ct_sparsity",
    "encode",
    "read_folder",
    "write_folder",
]

#: The compressed-tensors release whose layout is written (its ``version`` entry).
LAYOUT_VERSION = "0.13.0"
#: The sparse formats; ``"dense"`` is the third value a ``sparsity_config`` may name.
FORMATS = ("sparse-bitmask", "sparse-24-bitmask")
#: The single weights file, and the index of a sharded folder.
WEIGHTS_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
#: Shard size by default, as ``transformers`` wrote when compressed-tensors 0.13 was current.
DEFAULT_SHARD_BYTES = 5 * 10**9
#: Parts of a compressed weight, in the order compressed-tensors writes them.
_PARTS = {"sparse-bitmask": ("shape", "compressed", "bitmask", "row_offsets"),
          "sparse-24-bitmask": ("shape", "compressed", "bitmask")}
#: Entries of a ``quantization_config`` that hold no quantization.
_NOT_QUANTIZATION = {"quant_method", "version", "sparsity_config", "transform_config",
                     "config_groups", "kv_cache_scheme", "format", "quantization_status",
                     "global_compression_ratio", "ignore"}
_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_MAX_DIMS = 8


def encode(tensor: torch.Tensor, format: str) -> dict[str, torch.Tensor]:
    """``tensor`` (2-D) in a compressed-tensors sparse format, parts keyed by part name.

    Args:
        tensor: the weight; for ``"sparse-24-bitmask"`` every group of four consecutive
            entries of a row must hold at most two non-zeros.
        format: ``"sparse-bitmask"`` or ``"sparse-24-bitmask"``.

    Returns:
        ``{"shape", "compressed", "bitmask"[, "row_offsets"]}`` as compressed-tensors 0.13
        writes them.

    Example:
        >>> parts = encode(torch.tensor([[0.0, 2.0, 0.0, 3.0]]), "sparse-24-bitmask")
        >>> parts["shape"].tolist(), parts["compressed"].tolist(), parts["bitmask"].tolist()
        ([[1], [4]], [[2.0, 3.0]], [[10]])
    """
    tensor = tensor.detach().cpu()
    shape = torch.tensor(list(tensor.shape), dtype=torch.int64)
    if format == "sparse-24-bitmask":
        mask = two_four_mask(tensor)
        return {"shape": shape.reshape(-1, 1),
                "compressed": tensor[mask].reshape(tensor.shape[0], -1),
                "bitmask": pack_bits(mask)}
    mask = tensor != 0
    counts = mask.sum(dim=-1)
    return {"shape": shape, "compressed": tensor[mask], "bitmask": pack_bits(mask),
            "row_offsets": torch.cumsum(counts, 0) - counts}


def _compressible(state: Mapping[str, torch.Tensor], modules: Collection[str]) -> list[str]:
    """Of ``modules``, those whose 2-D floating weight has zeros and is smaller compressed."""
    chosen = []
    for name in modules:
        weight = state.get(f"{name}.weight")
        if weight is None or weight.ndim != 2 or not weight.is_floating_point() or bool(
            (weight != 0).all()
        ):
            continue
        if bitmask_bytes(weight) < weight.numel() * weight.element_size():
            chosen.append(name)
    return chosen


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """``tensors`` in order, cut into groups of at most ``max_bytes`` (a larger tensor alone);
    the parts of one compressed weight stay together."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for group in _groups(tensors):
        nbytes = sum(t.numel() * t.element_size() for t in group.values())
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1].update(group)
        size += nbytes
    return shards


def _groups(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``tensors`` as consecutive groups sharing a module prefix (a compressed weight's parts)
    or alone."""
    groups: list[dict[str, torch.Tensor]] = []
    previous = None
    for key, tensor in tensors.items():
        prefix, _, part = key.rpartition(".")
        together = part in _PARTS["sparse-bitmask"] and prefix == previous
        if not together:
            groups.append({})
        groups[-1][key] = tensor
        previous = prefix if part in _PARTS["sparse-bitmask"] else None
    return groups


def write_folder(
    state: Mapping[str, torch.Tensor],
    directory: Path,
    modules: Collection[str],
    max_shard_size: int = DEFAULT_SHARD_BYTES,
) -> tuple[list[StoredTensor], dict]:
    """Write the weights of ``state`` into ``directory`` as compressed-tensors 0.13 does.

    Args:
        state: a state dict with pruning made permanent, tied weights given once.
        directory: an existing folder; ``model.safetensors`` or its shards and index are
            written there.
        modules: the prunable layers' names (their weights may be compressed).
        max_shard_size: the most bytes of one file, over which the weights are sharded.

    Returns:
        How each tensor of ``state`` was written, and the ``sparsity_config``.
    """
    chosen = _compressible(state, modules)
    two_four = bool(chosen) and all(fits_two_four(state[f"{n}.weight"]) for n in chosen)
    format = "sparse-24-bitmask" if two_four else "sparse-bitmask"
    compressed = {f"{n}.weight": n for n in chosen}
    tensors: dict[str, torch.Tensor] = {}
    stored = []
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if key in compressed:
            parts = encode(tensor, format)
            tensors.update({f"{compressed[key]}.{part}": v for part, v in parts.items()})
        else:
            parts = {"": tensor}
            tensors[key] = tensor
        stored.append(StoredTensor(
            key, list(tensor.shape), int((tensor != 0).sum()),
            ("2:4" if two_four else "bitmask") if key in compressed else "dense",
            sum(v.numel() * v.element_size() for v in parts.values()),
        ))
    _save(separate_storage(tensors), directory, max_shard_size)
    total = sum(state[key].numel() for key in compressed)
    zeros = total - sum(t.nonzero for t in stored if t.name in compressed)
    config = {
        "format": format if chosen else "dense",
        "global_sparsity": zeros / total if total else 0.0,
        "ignore": [],
        "registry_requires_subclass": False,
        "sparsity_structure": "2:4" if two_four else "unstructured",
        "targets": chosen,
    }
    return stored, config


def _save(tensors: dict[str, torch.Tensor], directory: Path, max_bytes: int) -> None:
    """``model.safetensors``, or shards and their index when the tensors exceed ``max_bytes``."""
    shards = _shards(tensors, max_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def ct_sparsity(config: Mapping, where: str) -> dict | None:
    """The ``sparsity_config`` of a ``config.json``'s data that compressed-tensors wrote
    (``{"format": "dense"}`` when it names none), or ``None`` for any other config.

    Raises:
        ValueError: for a quantized or transformed checkpoint, or an unknown format.

    Example:
        >>> ct_sparsity({"quantization_config": {"quant_method": "compressed-tensors",
        ...     "sparsity_config": {"format": "sparse-bitmask"}}}, "d")["format"]
        'sparse-bitmask'
    """
    quantization = config.get("quantization_config")
    if not isinstance(quantization, Mapping) or quantization.get(
        "quant_method"
    ) != "compressed-tensors":
        return None
    quantized = [key for key, value in quantization.items()
                 if value and key not in _NOT_QUANTIZATION]
    if quantization.get("config_groups") or quantization.get("kv_cache_scheme") or quantized:
        raise ValueError(f"{where} is a quantized compressed-tensors checkpoint; l0prune reads "
                         "its sparse formats only (load it with compressed-tensors)")
    if quantization.get("transform_config"):
        raise ValueError(f"{where} is a compressed-tensors checkpoint with transforms; l0prune "
                         "reads its sparse formats only")
    sparsity = quantization.get("sparsity_config") or {"format": "dense"}
    if not isinstance(sparsity, Mapping) or sparsity.get("format") not in (*FORMATS, "dense"):
        found = sparsity.get("format") if isinstance(sparsity, Mapping) else sparsity
        raise ValueError(f"{where}: compressed-tensors sparsity format {found!r} is not one "
                         f"l0prune reads ({', '.join(FORMATS)}, dense)")
    return dict(sparsity)


def _inside(directory: Path, name, where: str) -> Path:
    """``directory / name`` for a plain file name; a path that leaves the folder is refused."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or (
        "\\" in name
    ):
        raise ValueError(f"{where}: {INDEX_NAME} names the file {name!r}, which is not a file "
                         "of the folder")
    path = directory / name
    if not path.is_file():
        raise ValueError(f"{where}: {INDEX_NAME} names {name!r}, which is missing")
    return path


def _weight_files(directory: Path, where: str) -> dict[str, Path]:
    """Each tensor's file: every tensor of ``model.safetensors``, or the index's
    ``weight_map``."""
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{where}: {INDEX_NAME} holds no readable weight_map") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{where}: {INDEX_NAME}'s weight_map must map tensor names to "
                             "files")
        files = {name: _inside(directory, name, where) for name in set(weight_map.values())}
        return {key: files[name] for key, name in weight_map.items()}
    single = directory / WEIGHTS_NAME
    if not single.is_file():
        raise ValueError(f"{where} holds neither {WEIGHTS_NAME} nor {INDEX_NAME}")
    with safe_open(str(single), framework="pt") as file:
        return dict.fromkeys(file.keys(), single)


def read_folder(directory: str | Path, format: str) -> dict[str, torch.Tensor]:
    """The dense state dict of a compressed-tensors folder (CPU tensors).

    Everything is checked from the files' headers before a tensor of a declared size is built:
    every tensor the index names is in its file; every compressed weight has its parts, of the
    format's dtypes and of shapes that fit its declared shape. A declared shape is thereby
    backed by its bitmask (eight entries per byte), so the state dict is at most 64 times the
    files' size.

    Args:
        directory: the folder.
        format: its ``sparsity_config`` format (:func:`ct_sparsity`).

    Returns:
        The state dict, compressed weights decoded bit for bit, under ``NAME.weight``.

    Raises:
        ValueError: naming the first tensor that is missing or does not fit.
    """
    directory = Path(directory)
    where = repr(str(directory))
    files = _weight_files(directory, where)
    with ExitStack() as stack:
        opened = {path: stack.enter_context(safe_open(str(path), framework="pt"))
                  for path in set(files.values())}
        held = {path: set(file.keys()) for path, file in opened.items()}
        for key, path in files.items():
            if key not in held[path]:
                raise ValueError(f"{where}: tensor {key!r} is missing from {path.name}")
        slices = {key: opened[path] for key, path in files.items()}
        groups = _compressed_groups(files, format, where)
        parts_of = {key for parts in groups.values() for key in parts.values()}
        state = {}
        for key in files:
            if key in parts_of:
                prefix = key.rpartition(".")[0]
                if f"{prefix}.weight" not in state:
                    state[f"{prefix}.weight"] = _decode(
                        {p: slices[k] for p, k in groups[prefix].items()}, groups[prefix],
                        format, where)
            else:
                state[key] = slices[key].get_tensor(key)
    return state


def _compressed_groups(files: Mapping[str, Path], format: str,
                       where: str) -> dict[str, dict[str, str]]:
    """Per compressed module, its parts' keys; a module lacking a part is refused."""
    if format not in FORMATS:
        return {}
    parts = _PARTS[format]
    groups: dict[str, dict[str, str]] = {}
    for key in files:
        prefix, _, part = key.rpartition(".")
        if prefix and part in parts:
            groups.setdefault(prefix, {})[part] = key
    for prefix, found in groups.items():
        missing = [f"{prefix}.{part}" for part in parts if part not in found]
        if missing:
            raise ValueError(f"{where}: the {format} weight {prefix!r} lacks {missing[0]!r}")
        if f"{prefix}.weight" in files:
            raise ValueError(f"{where}: {prefix + '.weight'!r} is stored both compressed and "
                             "dense")
    return groups


def _decode(files: Mapping, keys: Mapping[str, str], format: str, where: str) -> torch.Tensor:
    """The dense weight of one compressed module, its parts checked before decoding."""
    prefix = keys["shape"].rpartition(".")[0]
    shape = _declared_shape(files["shape"], keys["shape"], format, where)
    head = {part: files[part].get_slice(key) for part, key in keys.items()}
    last = shape[-1]
    rows = math.prod(shape[:-1])
    bits_shape = [*shape[:-1], math.ceil(last / 8)]
    expected = {"bitmask": bits_shape}
    if format == "sparse-24-bitmask":
        expected["compressed"] = [shape[0], last // 2]
    else:
        expected["row_offsets"] = shape[:-1]
    for part, size in expected.items():
        found = list(head[part].get_shape())
        if found != size:
            raise ValueError(f"{where}: {keys[part]} of shape {found} does not fit a weight of "
                             f"shape {shape} in {format}")
    values = head["compressed"]
    if head["bitmask"].get_dtype() != "U8" or values.get_dtype() not in _FLOATS or (
        format == "sparse-bitmask" and (len(values.get_shape()) != 1
                                        or values.get_shape()[0] > rows * last)
    ) or ("row_offsets" in head and not head["row_offsets"].get_dtype().startswith("I")):
        raise ValueError(f"{where}: the parts of {prefix!r} (bitmask {head['bitmask'].get_dtype()}"
                         f", compressed {values.get_dtype()} {values.get_shape()}) do not fit a "
                         f"weight of shape {shape} in {format}")
    bits = files["bitmask"].get_tensor(keys["bitmask"]).reshape(rows, -1)
    mask = unpack_bits(bits, last).reshape(shape)
    compressed = files["compressed"].get_tensor(keys["compressed"]).reshape(-1)
    kept = int(mask.sum())
    if kept != compressed.numel():
        raise ValueError(f"{where}: {keys['bitmask']} marks {kept} entries for "
                         f"{compressed.numel()} values")
    out = torch.zeros(shape, dtype=compressed.dtype)
    out[mask] = compressed
    return out


def _declared_shape(file, key: str, format: str, where: str) -> list[int]:
    """The dense shape a ``NAME.shape`` part declares (int64, ``n`` or ``n x 1``)."""
    head = file.get_slice(key)
    dims = list(head.get_shape())
    if head.get_dtype() != "I64" or not (len(dims) == 1 or (len(dims) == 2 and dims[1] == 1)) or (
        not 1 <= dims[0] <= _MAX_DIMS
    ):
        raise ValueError(f"{where}: {key} must hold 1 to {_MAX_DIMS} int64 sizes, got "
                         f"{head.get_dtype()} of shape {dims}")
    shape = [int(n) for n in file.get_tensor(key).reshape(-1).tolist()]
    if any(n < 0 for n in shape) or (format == "sparse-24-bitmask" and (
        len(shape) != 2 or shape[1] % 4
    )):
        raise ValueError(f"{where}: {key} declares the impossible shape {shape} for {format}")
    return shape
