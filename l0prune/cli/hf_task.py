"""The task of ``--model hf:NAME_OR_DIR``: a Hugging Face model, text or the user's batches,
the next-token loss for a causal LM, and a ``model/`` folder in the output.

- The model loads with ``AutoModelForCausalLM`` when its config is a causal LM, else with
  ``AutoModel`` (:mod:`l0prune.io.hf`). Its KV cache is off while it is pruned (the run never
  generates, and a cache would hold every layer's keys and values) and back on when it is saved.
- ``text:`` / ``hf-dataset:`` data is tokenised with the model's tokenizer into ``--nsamples``
  windows of ``--seqlen`` tokens (128 x 2048 by default, the length capped at the model's
  maximum): calibration windows drawn at random with ``--seed``, validation windows consecutive
  from the start (:func:`l0prune.text_batches`).
- The loss of a causal LM is the mean next-token negative log-likelihood, so the report gives
  perplexities. A model without an LM head (a BERT-class encoder loaded with ``AutoModel``) has
  no loss of its own and no neutral one: it needs ``--loss``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

import l0prune
from l0prune.data.text import read_source, text_batches
from l0prune.io import hf

from .config import Settings
from .errors import UsageError
from .references import load_batches, load_callable
from .sources import HF_PREFIX, is_text
from .task import Task

__all__ = ["DEFAULT_NSAMPLES", "DEFAULT_SEQLEN", "hf_task"]

#: Text windows and their length by default, as SparseGPT, Wanda and ALPS calibrate.
DEFAULT_NSAMPLES, DEFAULT_SEQLEN = 128, 2048


def _quiet_transformers() -> None:
    """No progress bars or warnings from ``transformers``: the run prints its own lines."""
    transformers = hf.require_transformers()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _seqlen(settings: Settings, limit: int | None) -> int:
    if settings.seqlen is None:
        return min(DEFAULT_SEQLEN, limit) if limit is not None else DEFAULT_SEQLEN
    if limit is not None and settings.seqlen > limit:
        raise UsageError(
            f"--seqlen {settings.seqlen} is above the model's maximum length of {limit} tokens"
        )
    return settings.seqlen


def _data(source: str, label: str, tokenizer, nsamples: int, seqlen: int, seed: int,
          draw: str):
    if not is_text(source):
        return load_batches(source, label)
    try:
        return text_batches(tokenizer, read_source(source), nsamples=nsamples, seqlen=seqlen,
                            seed=seed, draw=draw)
    except ValueError as err:
        raise UsageError(f"{label} {source}: {err}") from None


def _saver(tokenizer, save_format: str, use_cache):
    """Write the pruned model (its KV cache setting as loaded) and its tokenizer to a folder."""

    def save(model: nn.Module, folder: Path) -> None:
        if use_cache is not None:
            model.config.use_cache = use_cache
        l0prune.save_pretrained(model, folder, format=save_format)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    return save


def hf_task(settings: Settings) -> Task:
    """The :class:`~l0prune.cli.task.Task` of ``--model hf:NAME_OR_DIR``.

    Raises:
        UsageError / ValueError: one line, for a model that does not load, a missing tokenizer,
            an encoder without ``--loss``, ``--seqlen`` above the model's maximum, a text
            shorter than one window.
    """
    name = settings.model[len(HF_PREFIX):]
    trust = bool(settings.trust_remote_code)
    _quiet_transformers()
    label = f"--model {settings.model}"
    try:
        model = hf.load_model(name, trust)
    except ValueError as err:
        raise UsageError(f"{label}: {err}") from None
    causal = hf.is_causal_lm(model.config)
    if not causal and settings.loss is None:
        raise UsageError(
            f"{label} is a {type(model).__name__}, not a causal LM: give --loss MODULE:NAME "
            "(loss_fn(outputs, batch) -> scalar); a model without an LM head has no loss of "
            "its own"
        )
    tokenizer = None
    if is_text(settings.calibration) or is_text(settings.validation):
        try:
            tokenizer = hf.load_tokenizer(name, trust)
        except ValueError as err:
            raise UsageError(f"{label}: {err}") from None
    seqlen = _seqlen(settings, hf.max_length(model.config, tokenizer))
    nsamples = settings.nsamples or DEFAULT_NSAMPLES
    calibration = _data(settings.calibration, "--calibration", tokenizer, nsamples, seqlen,
                        settings.config.seed, "random")
    validation = _data(settings.validation, "--validation", tokenizer, nsamples, seqlen,
                       settings.config.seed, "consecutive")
    loss_fn = load_callable(settings.loss, "--loss") if settings.loss is not None \
        else l0prune.next_token_nll
    use_cache = getattr(model.config, "use_cache", None)
    if use_cache is not None:
        model.config.use_cache = False
    windows = f" ({nsamples} x {seqlen} tokens)" if tokenizer is not None else ""
    return Task(
        description=f"{settings.model}: {type(model).__name__}, "
                    f"{sum(p.numel() for p in model.parameters()):,} parameters (calibration "
                    f"{settings.calibration}{windows}, validation {settings.validation})",
        model=model,
        calibration=calibration,
        validation=validation,
        loss_fn=loss_fn,
        save_model=_saver(tokenizer, settings.save_format or "dense", use_cache),
    )
