"""The task of ``--model hf:NAME_OR_DIR``: a Hugging Face model, text or the user's batches,
the next-token loss for a causal LM, and a ``model/`` folder in the output.

- The model loads with ``AutoModelForCausalLM`` when its config is a causal LM, else with
  ``AutoModel`` (:mod:`l0prune.io.hf`), in ``--dtype`` at ``--revision``. A folder (or hub model)
  in a compressed format is decoded; weights lacking a tensor of the model are refused. Its KV
  cache is off while it is pruned (the run never generates, and a cache would hold every
  layer's keys and values) and back on when it is saved.
- ``text:`` / ``hf-dataset:`` data is tokenised with the model's tokenizer into ``--nsamples``
  windows of ``--seqlen`` tokens (128 x 2048 by default, the length capped at the model's
  maximum): calibration windows drawn at random with ``--seed``, validation windows consecutive
  from the start (:func:`l0prune.text_batches`).
- The loss of a causal LM is the mean next-token negative log-likelihood, so the report gives
  perplexities. An encoder (BERT class) whose checkpoint has a masked-LM head
  (``architectures`` names ``...ForMaskedLM``) and no ``--loss`` loads with that head and is
  judged by the masked-LM loss on its text validation windows, a seeded 15 % of their tokens
  hidden (:func:`~l0prune.data.masked_lm.masked_lm_batches`). An encoder without that head has
  no loss of its own: at a fixed sparsity it is pruned without one (the report gives no loss),
  and ``--alpha`` needs ``--loss``.
- ``model/`` holds the run's ``recipe.toml`` too, as llm-compressor's saved folder holds its
  ``recipe.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

import l0prune
from l0prune.data.masked_lm import masked_lm_batches
from l0prune.data.text import read_source, text_batches
from l0prune.io import hf

from .config import Settings
from .errors import UsageError
from .references import load_batches, load_callable
from .sources import HF_PREFIX, is_text
from .task import Task

__all__ = ["DEFAULT_NSAMPLES", "DEFAULT_SEQLEN", "hf_task", "quiet_transformers"]

log = logging.getLogger("l0prune.cli")

#: Text windows and their length by default, as SparseGPT, Wanda and ALPS calibrate.
DEFAULT_NSAMPLES, DEFAULT_SEQLEN = 128, 2048


def quiet_transformers() -> None:
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


def _saver(tokenizer, save_format: str, use_cache, recipe: str):
    """Write the pruned model (its KV cache setting as loaded), its tokenizer and the recipe
    to a folder."""

    def save(model: nn.Module, folder: Path) -> None:
        if use_cache is not None:
            model.config.use_cache = use_cache
        l0prune.save_pretrained(model, folder, format=save_format, recipe=recipe)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    return save


def _load_options(settings: Settings) -> dict:
    """``from_pretrained``'s keyword arguments of ``--revision`` and ``--dtype``."""
    options = {} if settings.revision is None else {"revision": settings.revision}
    if settings.dtype is not None:
        import torch

        options["dtype"] = settings.dtype if settings.dtype == "auto" else getattr(
            torch, settings.dtype)
    return options


def _encoder_loss(settings: Settings, config, label: str) -> str | None:
    """How an encoder without ``--loss`` is judged: ``"masked-lm"`` (its checkpoint has that
    head), ``None`` (no loss, at a fixed sparsity); with ``--alpha`` and no head, one line
    saying what to give."""
    if hf.has_masked_lm_head(config):
        return "masked-lm"
    if not settings.config.fixed:
        kind = (getattr(config, "architectures", None) or [config.model_type])[0]
        raise UsageError(
            f"{label} is a {kind}, neither a causal LM nor an encoder with a masked-LM head: "
            f"--alpha {settings.config.alpha:g} needs --loss MODULE:NAME (loss_fn(outputs, batch)"
            " -> scalar, such as a sentence-embedding distance to the dense model; see the "
            "documentation's Hugging Face page), or give --sparsity"
        )
    return None


def _masked(validation, tokenizer, settings: Settings, label: str):
    """Text validation windows with a seeded draw of their tokens hidden and ``labels``."""
    if tokenizer is None or not is_text(settings.validation):
        return validation
    if tokenizer.mask_token_id is None:
        raise UsageError(f"{label}: its tokenizer has no mask token, so the masked-LM loss "
                         "cannot be measured; give --loss MODULE:NAME")
    return masked_lm_batches(validation, tokenizer.mask_token_id, seed=settings.config.seed,
                             special_ids=tokenizer.all_special_ids)


def hf_task(settings: Settings) -> Task:
    """The :class:`~l0prune.cli.task.Task` of ``--model hf:NAME_OR_DIR``.

    Raises:
        UsageError / ValueError: one line, for a model that does not load, a missing tokenizer,
            an encoder without a loss of its own given ``--alpha`` but no ``--loss``,
            ``--seqlen`` above the model's maximum, a text shorter than one window.
    """
    name = settings.model[len(HF_PREFIX):]
    trust = bool(settings.trust_remote_code)
    quiet_transformers()
    label = f"--model {settings.model}"
    try:
        config = hf.load_config(name, trust, settings.revision)
        causal = hf.is_causal_lm(config)
        judged = None if causal or settings.loss is not None else _encoder_loss(
            settings, config, label)
        cls = hf.require_transformers().AutoModelForMaskedLM if judged == "masked-lm" else None
        model = hf.load_model(name, trust, cls=cls, **_load_options(settings))
    except ValueError as err:
        raise UsageError(f"{label}: {err}") from None
    tokenizer = None
    if is_text(settings.calibration) or is_text(settings.validation):
        try:
            tokenizer = hf.load_tokenizer(name, trust, settings.revision)
        except ValueError as err:
            raise UsageError(f"{label}: {err}") from None
    seqlen = _seqlen(settings, hf.max_length(model.config, tokenizer))
    nsamples = settings.nsamples or DEFAULT_NSAMPLES
    calibration = _data(settings.calibration, "--calibration", tokenizer, nsamples, seqlen,
                        settings.config.seed, "random")
    validation = None
    if settings.validation is not None:
        validation = _data(settings.validation, "--validation", tokenizer, nsamples, seqlen,
                           settings.config.seed, "consecutive")
    if judged == "masked-lm":
        validation = _masked(validation, tokenizer, settings, label)
    elif not causal and settings.loss is None and validation is not None:
        log.warning("--validation %s is not used: %s has no loss of its own (give --loss "
                    "MODULE:NAME to measure one)", settings.validation, type(model).__name__)
        validation = None
    if settings.loss is not None:
        loss_fn = load_callable(settings.loss, "--loss")
    else:
        loss_fn = l0prune.next_token_nll if causal else None
    use_cache = getattr(model.config, "use_cache", None)
    if use_cache is not None:
        model.config.use_cache = False
    windows = f" ({nsamples} x {seqlen} tokens)" if tokenizer is not None else ""
    judge = {"masked-lm": ", masked-LM loss"}.get(judged, "")
    return Task(
        description=f"{settings.model}: {type(model).__name__}, "
                    f"{sum(p.numel() for p in model.parameters()):,} parameters (calibration "
                    f"{settings.calibration}{windows}, validation {settings.validation}{judge})",
        model=model,
        calibration=calibration,
        validation=validation,
        loss_fn=loss_fn,
        save_model=_saver(tokenizer, settings.save_format or "dense", use_cache,
                          settings.to_toml()),
    )
