"""Hugging Face checkpoints of pruned models: dense, or compressed with the zeros left out.

- ``format="dense"`` is the model's own ``save_pretrained`` with pruning made permanent (the
  state dict :func:`~l0prune.model.finalize.finalize` gives): a folder any ``from_pretrained``
  loads. This is also what llm-compressor writes today: its 0.14 release, on compressed-tensors
  0.19, saves sparse models densely.
- ``format="compressed"`` writes ``config.json`` (with a ``sparsity_config`` entry) and the
  weights in ``model.sparse.safetensors``, each pruned weight in the bitmask layout of
  compressed-tensors' former ``sparse-bitmask`` format or, for a 2:4 weight, the 2:4 layout with
  2-bit indices (:mod:`l0prune.io.sparse_layouts`). At 50 % / 90 % unstructured sparsity a pruned
  fp32 weight takes about 0.53x / 0.13x its dense bytes. The weights file has another name than
  ``model.safetensors`` so that a plain ``from_pretrained`` refuses the folder instead of
  initialising the weights it does not find; :func:`load_pretrained` reads it.

``config.json``'s ``sparsity_config`` (top level, not under ``quantization_config``, so no
quantizer is asked to load it) holds ``format`` (``"sparse-bitmask"``), ``weights`` (the file),
``layouts`` (the names stored as ``"bitmask"`` and as ``"2:4"``), ``global_sparsity`` (zeros
over the entries of those weights), ``sparsity_structure`` (``"unstructured"``, ``"2:4"`` or
``"mixed"``) and ``producer``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from l0prune.model.masks import permanent_state_dict
from l0prune.validate import inside

from .compressed_file import StoredTensor, read_compressed, transposed_weights, write_compressed
from .files import follow_umask
from .hf import is_causal_lm, require_transformers

__all__ = ["WEIGHTS_NAME", "SavedModel", "load_pretrained", "save_pretrained"]

#: The weights file of a compressed folder.
WEIGHTS_NAME = "model.sparse.safetensors"
_FORMATS = ("dense", "compressed")


@dataclass
class SavedModel:
    """What :func:`save_pretrained` wrote.

    Attributes:
        directory: the folder.
        format: ``"dense"`` or ``"compressed"``.
        bytes: all files in the folder.
        weight_bytes: the weight files (``*.safetensors``) alone.
        tensors: per tensor, its layout (compressed format only).
    """

    directory: str
    format: str
    bytes: int
    weight_bytes: int
    tensors: list[StoredTensor] = field(default_factory=list)


def _check_model(model) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "config") or not hasattr(
        model, "save_pretrained"
    ):
        raise ValueError(
            f"model must be a Hugging Face model (a transformers PreTrainedModel), got "
            f"{type(model).__name__}; for any other model use l0prune.export(model, path)"
        )


def _without_ties(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the later names of tensors that are one tensor (tied weights, which
    ``from_pretrained`` ties again)."""
    seen, unique = set(), {}
    for name, tensor in state.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
               tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        unique[name] = tensor
    return unique


def _sparsity_config(stored: list[StoredTensor]) -> dict:
    layouts = {kind: [t.name for t in stored if t.layout == kind] for kind in ("bitmask", "2:4")}
    compressed = [t for t in stored if t.layout != "dense"]
    total = sum(int(torch.Size(t.shape).numel()) for t in compressed)
    zeros = total - sum(t.nonzero for t in compressed)
    kinds = [kind for kind, names in layouts.items() if names]
    structure = {("bitmask",): "unstructured", ("2:4",): "2:4"}.get(tuple(kinds), "mixed")
    return {
        "format": "sparse-bitmask",
        "weights": WEIGHTS_NAME,
        "layouts": layouts,
        "global_sparsity": zeros / total if total else 0.0,
        "sparsity_structure": structure if kinds else "dense",
        "producer": f"l0prune {importlib.metadata.version('l0prune')}",
    }


def _folder_bytes(directory: Path) -> tuple[int, int]:
    files = [p for p in directory.rglob("*") if p.is_file()]
    return (sum(p.stat().st_size for p in files),
            sum(p.stat().st_size for p in files if p.suffix == ".safetensors"))


def _weight_files(directory: Path) -> dict[Path, int]:
    """The ``*.safetensors`` files of ``directory`` and when each last changed."""
    if not directory.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in directory.glob("*.safetensors") if p.is_file()}


def _save_dense(model: nn.Module, directory: Path, state: dict[str, torch.Tensor]) -> None:
    """``model.save_pretrained`` with ``state``; the weight files it writes (through the
    safetensors library: mode 0600) get the mode the umask gives, as its other files do."""
    before = _weight_files(directory)
    model.save_pretrained(directory, state_dict=state)
    for path, changed in _weight_files(directory).items():
        if before.get(path) != changed:
            follow_umask(path)


def save_pretrained(model: nn.Module, directory: str | Path, format: str = "dense") -> SavedModel:
    """Write a pruned Hugging Face model as a folder, without changing the model.

    Args:
        model: a ``transformers`` model, pruned by :func:`l0prune.prune` (masks attached or
            made permanent by :func:`l0prune.model.finalize`) or not.
        directory: the folder (created if needed; files of the same names are replaced).
        format: ``"dense"``: ``model.save_pretrained`` with pruning made permanent, loaded by
            any ``from_pretrained``; ``"compressed"``: the weights in the bitmask / 2:4 layouts
            (see the module docstring), loaded by :func:`load_pretrained`.

    Returns:
        A :class:`SavedModel` with the sizes written.

    Example:
        >>> import tempfile, transformers
        >>> model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        ...     vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     saved = save_pretrained(model, d, format="compressed")
        ...     back = load_pretrained(d)
        >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
        ...                                        back.state_dict().values()))
        True
    """
    _check_model(model)
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {', '.join(_FORMATS)}, got {format!r}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"directory {str(directory)!r} exists and is not a folder")
    state = permanent_state_dict(model)
    if format == "dense":
        _save_dense(model, directory, state)
        stored = []
    else:
        directory.mkdir(parents=True, exist_ok=True)
        stored = write_compressed(
            _without_ties(state), directory / WEIGHTS_NAME, transposed_weights(model)
        )
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        config.save_pretrained(directory)
        generation = getattr(model, "generation_config", None)
        if generation is not None and model.can_generate():
            generation.save_pretrained(directory)
        path = directory / "config.json"
        data = json.loads(path.read_text())
        data["sparsity_config"] = _sparsity_config(stored)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    total, weights = _folder_bytes(directory)
    return SavedModel(str(directory), format, total, weights, stored)


def _model_class(config, trust_remote_code: bool):
    transformers = require_transformers()
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModelForCausalLM if is_causal_lm(config) else transformers.AutoModel


def load_pretrained(directory: str | Path, trust_remote_code: bool = False) -> nn.Module:
    """The Hugging Face model of a folder written by :func:`save_pretrained`, dense weights.

    The class is the one named in the config's ``architectures`` (else ``AutoModelForCausalLM``
    for a causal LM, ``AutoModel`` otherwise). A compressed folder's weights are decoded bit for
    bit; a dense folder is read by ``from_pretrained``.

    Args:
        directory: the folder.
        trust_remote_code: allow model code shipped with the checkpoint to run.

    Returns:
        The model, in eval mode.

    Raises:
        ValueError: when the folder holds no ``config.json``, its ``sparsity_config`` names
            weights outside the folder, or its weights do not decode.

    Example: see :func:`save_pretrained`.
    """
    require_transformers()
    from transformers import AutoConfig

    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise ValueError(f"{str(directory)!r} holds no config.json (not a Hugging Face folder)")
    sparsity = json.loads(path.read_text()).get("sparsity_config")
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    cls = _model_class(config, trust_remote_code)
    if sparsity is None:
        return cls.from_pretrained(directory, trust_remote_code=trust_remote_code).eval()
    if not isinstance(sparsity, dict):
        raise ValueError(f"{path}: sparsity_config must be an object, got {sparsity!r}")
    weights = inside(directory, sparsity.get("weights", WEIGHTS_NAME),
                     f"{path}: sparsity_config.weights")
    if not weights.is_file():
        raise ValueError(f"{str(directory)!r}: the compressed weights {weights.name} are missing")
    state = read_compressed(weights)
    if hasattr(config, "sparsity_config"):
        del config.sparsity_config
    model = cls.from_pretrained(
        None, config=config, state_dict=state, trust_remote_code=trust_remote_code
    )
    return model.eval()
