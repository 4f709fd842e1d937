"""The forms ``--model``, ``--calibration`` and ``--validation`` take, checked for form only.

- ``--model``: ``MODULE:NAME`` (the user's code) or ``hf:NAME_OR_DIR`` (a Hugging Face hub name
  or a folder written by ``save_pretrained``);
- ``--calibration`` / ``--validation``: ``MODULE:NAME``, ``text:PATH`` (a text file or a folder
  of ``.txt`` files) or ``hf-dataset:NAME[:CONFIG]:SPLIT``.

Loading happens in :mod:`l0prune.cli.task` and :mod:`l0prune.cli.hf_task`.
"""

from __future__ import annotations

from .errors import UsageError
from .values import nonempty, reference

__all__ = ["HF_PREFIX", "TEXT_PREFIXES", "data_source", "is_hf", "is_text", "model_source"]

#: The prefix of a Hugging Face model on the command line.
HF_PREFIX = "hf:"
#: The prefixes of text data.
TEXT_PREFIXES = ("text:", "hf-dataset:")


def is_hf(model: str | None) -> bool:
    """Whether a ``--model`` value names a Hugging Face model."""
    return model is not None and model.startswith(HF_PREFIX)


def is_text(source: str | None) -> bool:
    """Whether a data value names text."""
    return source is not None and source.startswith(TEXT_PREFIXES)


def model_source(value, label: str) -> str:
    """``hf:NAME_OR_DIR`` or ``MODULE:NAME``."""
    text = nonempty(value, label)
    if is_hf(text):
        if not text[len(HF_PREFIX):].strip():
            raise UsageError(f"{label} hf: needs a hub name or a folder after it, got {text}")
        return text
    try:
        return reference(text, label)
    except UsageError:
        raise UsageError(
            f"{label} must be MODULE:NAME (a module or .py file, a colon, a function or object "
            f"in it) or hf:NAME_OR_DIR (a Hugging Face model), got {text}"
        ) from None


def data_source(value, label: str) -> str:
    """``text:PATH``, ``hf-dataset:NAME[:CONFIG]:SPLIT`` or ``MODULE:NAME``."""
    text = nonempty(value, label)
    kind, _, rest = text.partition(":")
    if is_text(text):
        if kind == "hf-dataset" and rest.count(":") < 1:
            raise UsageError(f"{label} must be hf-dataset:NAME[:CONFIG]:SPLIT, got {text}")
        if not rest.strip():
            raise UsageError(f"{label} {kind}: needs what follows the colon, got {text}")
        return text
    try:
        return reference(text, label)
    except UsageError:
        raise UsageError(
            f"{label} must be MODULE:NAME (batches from your code), text:PATH (a .txt file or a "
            f"folder of them) or hf-dataset:NAME[:CONFIG]:SPLIT, got {text}"
        ) from None
