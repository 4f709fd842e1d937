"""Hugging Face models and tokenizers by hub name or folder, for pruning.

``transformers`` is imported only here and only when called (the ``hf`` extra installs it).
A hub name is looked up in the local cache first; only when it is not there is the hub asked, so
a machine without a network fails at once with a message that says how to give a folder.
A config is a causal LM when its ``architectures`` name a causal-LM class (``GPT2LMHeadModel``,
``LlamaForCausalLM``); a config without ``architectures`` when its model type has a causal-LM
class and no masked-LM one (so BERT-class encoders, which have both, are not).

A folder (or a hub snapshot) holding a compressed checkpoint, l0prune's own or compressed-tensors'
sparse formats, is read by :func:`l0prune.io.checkpoints.load_folder`; a hub model in one of
them is downloaded first (its ``*.json``, ``*.safetensors`` and tokenizer files). Weights that
lack a tensor of the model are refused, naming it.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from torch import nn

__all__ = [
    "NotFound",
    "has_masked_lm_head",
    "is_causal_lm",
    "load_config",
    "load_model",
    "load_tokenizer",
    "max_length",
    "model_class",
    "require_transformers",
]

#: Config attributes that hold a model's maximum sequence length, by model family.
_LENGTH_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length",
                      "seq_length")


def require_transformers():
    """The ``transformers`` module, or a ``ValueError`` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise ValueError(
            "Hugging Face models need the transformers package: pip install 'l0prune[hf]'"
        ) from None
    return transformers


@contextmanager
def _quiet_hub():
    """Silence the hub client's retry warnings for the duration (a failure is one line)."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class NotFound(ValueError):
    """A model folder that does not exist, or a hub name neither cached nor downloadable."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _not_found(name: str, err: Exception) -> NotFound:
    why = "the hub is off (HF_HUB_OFFLINE)" if _offline() else "the hub could not be reached"
    return NotFound(
        f"model {name!r} is not a folder and not in the local Hugging Face cache, and {why} "
        f"({type(err).__name__}); download it where there is a network, or give a folder "
        f"holding config.json and the weights: hf:/path/to/folder"
    )


def _from(name: str, loader, **kwargs):
    """``loader(name, ...)`` from a folder, else the local cache, else the hub.

    A name that can only be a path (it starts with ``.``, ``/`` or ``~``, or has more than the
    one slash of ``org/model``) and is no folder is refused without asking the hub.
    """
    folder = Path(name).expanduser()
    if folder.is_dir():
        return loader(str(folder), **kwargs)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise NotFound(f"model folder {name!r} does not exist")
    try:
        return loader(name, local_files_only=True, **kwargs)
    except OSError as cached_err:
        if _offline():
            raise _not_found(name, cached_err) from None
    try:
        with _quiet_hub():
            return loader(name, **kwargs)
    except OSError as err:
        raise _not_found(name, err) from None


def _revision(revision: str | None) -> dict:
    return {} if revision is None else {"revision": revision}


def load_config(name: str, trust_remote_code: bool = False, revision: str | None = None):
    """The ``transformers`` config of a hub name or folder.

    Args:
        name: a hub name (``"gpt2"``, ``"facebook/opt-125m"``) or a folder with ``config.json``.
        trust_remote_code: allow model code shipped with the checkpoint to run.
        revision: a hub model's branch, tag or commit (default: its main branch).

    Returns:
        The config.

    Raises:
        ValueError: one line, when the folder does not exist, or the name is neither cached nor
            downloadable, or the folder holds no config.
    """
    transformers = require_transformers()
    try:
        return _from(name, transformers.AutoConfig.from_pretrained,
                     trust_remote_code=trust_remote_code, **_revision(revision))
    except (OSError, KeyError) as err:
        raise ValueError(f"model {name!r}: no usable config.json ({err})") from None


def is_causal_lm(config) -> bool:
    """Whether ``config`` describes a causal LM (see the module docstring).

    Example:
        >>> from transformers import BertConfig, GPT2Config
        >>> is_causal_lm(GPT2Config()), is_causal_lm(BertConfig())
        (True, False)
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    architectures = getattr(config, "architectures", None) or []
    if architectures:
        causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        return any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel"))
                   for a in architectures)
    kind = getattr(config, "model_type", None)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in (
        MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def model_class(config):
    """``AutoModelForCausalLM`` for a causal LM, else ``AutoModel``."""
    transformers = require_transformers()
    return transformers.AutoModelForCausalLM if is_causal_lm(config) else transformers.AutoModel


def has_masked_lm_head(config) -> bool:
    """Whether ``config``'s ``architectures`` name a masked-LM class (``BertForMaskedLM``): the
    checkpoint holds that head's weights.

    Example:
        >>> from transformers import BertConfig
        >>> has_masked_lm_head(BertConfig(architectures=["BertForMaskedLM"]))
        True
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    masked = set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())
    return any(a in masked for a in getattr(config, "architectures", None) or [])


#: The files a compressed hub model is read from.
_SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.toml"]


def _snapshot(name: str, revision: str | None) -> Path:
    """The local folder of a hub model's files (the cache first, else the hub)."""
    from huggingface_hub import snapshot_download

    return Path(_from(name, snapshot_download, allow_patterns=_SNAPSHOT_FILES,
                      **_revision(revision)))


def load_model(name: str, trust_remote_code: bool = False, cls=None, **kwargs) -> nn.Module:
    """A Hugging Face model by hub name or folder, in eval mode.

    ``cls`` loads it; by default ``AutoModelForCausalLM`` a causal LM, ``AutoModel`` anything
    else (an encoder without its head). A compressed checkpoint (see the module docstring) is
    decoded; weights that lack a tensor of the model are refused.

    Args:
        name: a hub name or a folder.
        trust_remote_code: allow model code shipped with the checkpoint to run.
        cls: the ``transformers`` class to load it with.
        **kwargs: more keyword arguments of ``from_pretrained`` (``revision``, ``dtype``...).

    Returns:
        The model.

    Raises:
        ValueError: one line, as :func:`load_config`, or when its weights do not load.
    """
    from .checkpoints import check_complete, compressed_format, load_folder

    revision = kwargs.pop("revision", None)
    config = load_config(name, trust_remote_code, revision)
    cls = model_class(config) if cls is None else cls
    folder = Path(name).expanduser()
    if not folder.is_dir() and compressed_format(config.to_dict(), repr(name)) is not None:
        try:
            folder = _snapshot(name, revision)
        except OSError as err:
            raise ValueError(f"model {name!r}: its files do not download ({err})") from None
    if folder.is_dir():
        return load_folder(folder, cls, trust_remote_code, **kwargs)
    try:
        model, info = _from(name, cls.from_pretrained, config=config,
                            trust_remote_code=trust_remote_code, output_loading_info=True,
                            **_revision(revision), **kwargs)
    except OSError as err:
        raise ValueError(f"model {name!r}: its weights do not load ({err})") from None
    check_complete(model, info, repr(name))
    return model.eval()


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None):
    """The tokenizer saved with a model, or a ``ValueError`` when there is none.

    ``transformers`` builds an empty tokenizer for a folder without tokenizer files; a tokenizer
    whose vocabulary holds nothing but its special tokens counts as none.

    Args:
        name: a hub name or a folder.
        trust_remote_code: allow tokenizer code shipped with the checkpoint to run.
        revision: a hub model's branch, tag or commit.

    Returns:
        The tokenizer.
    """
    transformers = require_transformers()
    missing = ValueError(
        f"model {name!r} has no tokenizer: text data is tokenised with the model's own; save "
        "it next to the model (tokenizer.save_pretrained(folder))"
    )
    try:
        tokenizer = _from(name, transformers.AutoTokenizer.from_pretrained,
                          trust_remote_code=trust_remote_code, **_revision(revision))
    except NotFound:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # no files to build from
        raise missing from None
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_tokens)):
        raise missing
    return tokenizer


def max_length(config, tokenizer=None) -> int | None:
    """The longest sequence the model takes: its config's position limit, else the tokenizer's.

    Args:
        config: the model's config.
        tokenizer: its tokenizer, if any.

    Returns:
        The number of tokens, or ``None`` when neither states one.

    Example:
        >>> from transformers import GPT2Config
        >>> max_length(GPT2Config(n_positions=64))
        64
    """
    for attribute in _LENGTH_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**9:
        return value
    return None
