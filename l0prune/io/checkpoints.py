"""Hugging Face checkpoints of pruned models: dense, compressed, or in compressed-tensors' layout.

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
- ``format="compressed-tensors"`` writes the folder compressed-tensors 0.13 wrote for a sparse
  model (``quantization_config.sparsity_config``, ``model.safetensors`` with the
  ``sparse-bitmask`` or ``sparse-24-bitmask`` parts, sharded over 5 GB;
  :mod:`l0prune.io.ct_sparse`), which its ``ModelCompressor`` and, with compressed-tensors up to
  0.13 installed, ``from_pretrained`` decompress. Without it, ``from_pretrained`` of recent
  ``transformers`` does not read that folder right: load it with :func:`load_pretrained`.

:func:`load_pretrained` reads all three, and the folders compressed-tensors 0.13 wrote. A folder
whose weights do not hold every tensor of the model is refused, naming the first missing one,
instead of loading with those tensors initialised at random.

``config.json``'s ``sparsity_config`` of the compressed format (top level, not under
``quantization_config``, so no quantizer is asked to load it) holds ``format``
(``"sparse-bitmask"``), ``weights`` (the file), ``layouts`` (the names stored as ``"bitmask"``
and as ``"2:4"``), ``global_sparsity`` (zeros over the entries of those weights),
``sparsity_structure`` (``"unstructured"``, ``"2:4"`` or ``"mixed"``) and ``producer``.

With ``recipe=`` a folder of any format also holds the run's recipe as ``recipe.toml``, as
llm-compressor's hold its ``recipe.yaml``.
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
from l0prune.model.targets import prunable_layers
from l0prune.validate import inside

from . import ct_sparse
from .compressed_file import StoredTensor, read_compressed, transposed_weights, write_compressed
from .files import follow_umask
from .hf import is_causal_lm, require_transformers

__all__ = [
    "RECIPE_NAME",
    "WEIGHTS_NAME",
    "SavedModel",
    "check_complete",
    "compressed_format",
    "load_folder",
    "load_pretrained",
    "save_pretrained",
]

#: The weights file of a compressed folder.
WEIGHTS_NAME = "model.sparse.safetensors"
#: The run's recipe in a saved folder.
RECIPE_NAME = "recipe.toml"
_FORMATS = ("dense", "compressed", "compressed-tensors")


@dataclass
class SavedModel:
    """What :func:`save_pretrained` wrote.

    Attributes:
        directory: the folder.
        format: ``"dense"``, ``"compressed"`` or ``"compressed-tensors"``.
        bytes: all files in the folder.
        weight_bytes: the weight files (``*.safetensors``) alone.
        tensors: per tensor, its layout (compressed formats only).
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


def _save_dense(model: nn.Module, directory: Path, state: dict[str, torch.Tensor],
                shard: int | None) -> None:
    """``model.save_pretrained`` with ``state`` (in shards of ``shard`` bytes when given); the
    weight files it writes (through the safetensors library: mode 0600) get the mode the umask
    gives, as its other files do."""
    before = _weight_files(directory)
    model.save_pretrained(directory, state_dict=state,
                          **({} if shard is None else {"max_shard_size": shard}))
    for path, changed in _weight_files(directory).items():
        if before.get(path) != changed:
            follow_umask(path)


def _write_config(model: nn.Module, directory: Path, entries: dict) -> None:
    """``config.json`` (naming the model's class) with ``entries`` added, and the generation
    config of a model that generates."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(directory)
    generation = getattr(model, "generation_config", None)
    if generation is not None and model.can_generate():
        generation.save_pretrained(directory)
    path = directory / "config.json"
    data = json.loads(path.read_text())
    data.update(entries)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _remove_weight_files(directory: Path) -> None:
    """The weight files of the names compressed-tensors' layout writes, left by an earlier
    save (an index of old shards would otherwise be read instead of the new file)."""
    for path in (directory / ct_sparse.WEIGHTS_NAME, directory / ct_sparse.INDEX_NAME,
                 *directory.glob("model-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]"
                                 ".safetensors")):
        path.unlink(missing_ok=True)


def _recipe_text(recipe) -> str:
    from l0prune.config import PruneConfig

    if isinstance(recipe, dict):
        recipe = PruneConfig.from_dict(recipe)
    if isinstance(recipe, PruneConfig):
        return recipe.to_toml()
    if isinstance(recipe, str):
        return recipe
    raise ValueError(f"recipe must be a PruneConfig, its dict (a report's config) or its TOML "
                     f"text, got {type(recipe).__name__}")


def _shard_size(value, format: str) -> int | None:
    if value is None:
        return None
    if format == "compressed":
        raise ValueError("max_shard_size applies to the dense and compressed-tensors formats; "
                         f"the compressed one writes one file ({WEIGHTS_NAME})")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_shard_size must be a number of bytes >= 1, got {value!r}")
    return value


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    format: str = "dense",
    *,
    recipe=None,
    max_shard_size: int | None = None,
) -> SavedModel:
    """Write a pruned Hugging Face model as a folder, without changing the model.

    Args:
        model: a ``transformers`` model, pruned by :func:`l0prune.prune` (masks attached or
            made permanent by :func:`l0prune.model.finalize`) or not.
        directory: the folder (created if needed; files of the same names are replaced).
        format: ``"dense"``: ``model.save_pretrained`` with pruning made permanent, loaded by
            any ``from_pretrained``; ``"compressed"``: the weights in the bitmask / 2:4 layouts
            in ``model.sparse.safetensors``, which a plain ``from_pretrained`` refuses (it finds
            no ``model.safetensors``); ``"compressed-tensors"``: compressed-tensors 0.13's
            ``sparse-bitmask`` / ``sparse-24-bitmask`` folder (see the module docstring). Both
            compressed formats are read by :func:`load_pretrained`.
        recipe: the run's recipe, a :class:`~l0prune.PruneConfig`, its dict (a report's
            ``config``) or its TOML text, written as ``recipe.toml``; ``None``: none.
        max_shard_size: the most bytes of one weights file (dense and compressed-tensors);
            default: ``transformers``' own (dense), 5 GB (compressed-tensors).

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
    shard = _shard_size(max_shard_size, format)
    text = None if recipe is None else _recipe_text(recipe)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"directory {str(directory)!r} exists and is not a folder")
    state = permanent_state_dict(model)
    stored = []
    if format == "dense":
        _save_dense(model, directory, state, shard)
    elif format == "compressed":
        directory.mkdir(parents=True, exist_ok=True)
        stored = write_compressed(
            _without_ties(state), directory / WEIGHTS_NAME, transposed_weights(model)
        )
        _write_config(model, directory, {"sparsity_config": _sparsity_config(stored)})
    else:
        directory.mkdir(parents=True, exist_ok=True)
        _remove_weight_files(directory)
        stored, sparsity = ct_sparse.write_folder(
            _without_ties(state), directory, list(prunable_layers(model)),
            shard or ct_sparse.DEFAULT_SHARD_BYTES)
        _write_config(model, directory, {"quantization_config": {
            "quant_method": "compressed-tensors", "sparsity_config": sparsity,
            "transform_config": {}, "version": ct_sparse.LAYOUT_VERSION}})
    if text is not None:
        (directory / RECIPE_NAME).write_text(text)
    total, weights = _folder_bytes(directory)
    return SavedModel(str(directory), format, total, weights, stored)


def _model_class(config):
    transformers = require_transformers()
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModelForCausalLM if is_causal_lm(config) else transformers.AutoModel


def compressed_format(config: dict, where: str) -> str | None:
    """``"compressed"`` (l0prune's own), ``"compressed-tensors"`` or ``None`` (dense), from a
    ``config.json``'s data.

    Raises:
        ValueError: for a compressed-tensors checkpoint l0prune does not read (quantized).

    Example:
        >>> compressed_format({"model_type": "gpt2"}, "d") is None
        True
    """
    if config.get("sparsity_config") is not None:
        return "compressed"
    if ct_sparse.ct_sparsity(config, where) is not None:
        return "compressed-tensors"
    return None


def _config_data(directory: Path, where: str) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise ValueError(f"{where} holds no config.json (not a Hugging Face folder)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: config.json is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: config.json must hold an object")
    return data


def _own_weights(directory: Path, sparsity, where: str) -> Path:
    """The weights file an l0prune ``sparsity_config`` names, a file of the folder."""
    if not isinstance(sparsity, dict):
        raise ValueError(f"{where}: sparsity_config must be an object, got {sparsity!r}")
    name = sparsity.get("weights", WEIGHTS_NAME)
    weights = inside(directory, name, f"{where}: sparsity_config.weights")
    if not weights.is_file():
        raise ValueError(f"{where}: the compressed weights {name} are missing")
    return weights


def _compressed_state(directory: Path, data: dict, config,
                      where: str) -> dict[str, torch.Tensor] | None:
    """The decoded state dict of a compressed folder (its entry taken off ``config``), or
    ``None`` for a dense one."""
    kind = compressed_format(data, where)
    if kind == "compressed":
        state = read_compressed(_own_weights(directory, data["sparsity_config"], where))
        attribute = "sparsity_config"
    elif kind == "compressed-tensors":
        state = ct_sparse.read_folder(directory, ct_sparse.ct_sparsity(data, where)["format"])
        attribute = "quantization_config"
    else:
        return None
    if hasattr(config, attribute):
        delattr(config, attribute)
    return state


def check_complete(model: nn.Module, info: dict, where: str) -> None:
    """Refuse a model whose checkpoint lacked some of its tensors (``from_pretrained``
    initialised them at random), naming the first in the model's order.

    Args:
        model: what ``from_pretrained`` built.
        info: its loading info (``output_loading_info=True``).
        where: the checkpoint, for the message.

    Raises:
        ValueError: when ``info`` has missing keys.
    """
    missing = set(info.get("missing_keys") or ())
    if not missing:
        return
    first = next((key for key in model.state_dict() if key in missing), min(missing))
    raise ValueError(
        f"{where}: its weights lack {first!r} ({len(missing)} of the model's tensors are "
        "missing); refused rather than initialised at random (does config.json match the "
        "weights?)"
    )


def _concrete(cls, config, where: str):
    """An auto class's model class for ``config`` (building from a state dict needs one)."""
    mapping = getattr(cls, "_model_mapping", None)
    if mapping is None:
        return cls
    try:
        found = mapping[type(config)]
    except KeyError:
        raise ValueError(f"{where}: {cls.__name__} has no model class for a "
                         f"{type(config).__name__}") from None
    return found[0] if isinstance(found, (list, tuple)) else found


def load_folder(directory: str | Path, cls, trust_remote_code: bool = False,
                **kwargs) -> nn.Module:
    """A model of class ``cls`` from a folder in any format :func:`load_pretrained` reads.

    Args:
        directory: the folder.
        cls: a ``transformers`` model class (or auto class) to build.
        trust_remote_code: allow model code shipped with the checkpoint to run.
        **kwargs: more keyword arguments of ``from_pretrained`` (``dtype``, ``device_map``,
            ``attn_implementation``, ...).

    Returns:
        The model, in eval mode.

    Raises:
        ValueError: as :func:`load_pretrained`.
    """
    require_transformers()
    from transformers import AutoConfig

    directory = Path(directory)
    where = repr(str(directory))
    data = _config_data(directory, where)
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    state = _compressed_state(directory, data, config, where)
    if state is not None:
        cls = _concrete(cls, config, where)
    try:
        model, info = cls.from_pretrained(
            directory if state is None else None, config=config,
            trust_remote_code=trust_remote_code, output_loading_info=True,
            **({} if state is None else {"state_dict": state}), **kwargs)
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):
            raise
        raise ValueError(f"{where}: its weights do not have the shapes config.json gives them "
                         "(does config.json match the weights?)") from None
    check_complete(model, info, where)
    return model.eval()


def load_pretrained(directory: str | Path, trust_remote_code: bool = False,
                    **kwargs) -> nn.Module:
    """The Hugging Face model of a folder written by :func:`save_pretrained` or in
    compressed-tensors 0.13's sparse formats, dense weights.

    The class is the one named in the config's ``architectures`` (else ``AutoModelForCausalLM``
    for a causal LM, ``AutoModel`` otherwise). A compressed folder's weights are decoded bit for
    bit; a dense folder is read by ``from_pretrained``. A folder whose weights lack a tensor of
    the model (a file or an entry removed, or a ``config.json`` asking for more layers than
    the weights hold) is refused.

    Args:
        directory: the folder.
        trust_remote_code: allow model code shipped with the checkpoint to run.
        **kwargs: more keyword arguments of ``from_pretrained``: ``dtype``, ``device_map``,
            ``attn_implementation``, ...

    Returns:
        The model, in eval mode.

    Raises:
        ValueError: when the folder holds no ``config.json``, its weights do not decode, or
            they lack a tensor of the model (the message names the first).

    Example: see :func:`save_pretrained`.
    """
    require_transformers()
    from transformers import AutoConfig

    directory = Path(directory)
    _config_data(directory, repr(str(directory)))
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    return load_folder(directory, _model_class(config), trust_remote_code, **kwargs)
