"""Calibration batches regrouped by length, so that padding costs the statistics nothing.

A user's calibration batches are what a tokenizer gives: texts in their order, each batch padded
to its longest text. Statistics take the real tokens only (``attention_mask``), but every forward
pass computes the padding too: on texts of mixed lengths in batches of 32, about half the
positions. :func:`regrouped` takes the real tokens of each text out of the batches, sorts the
texts by length (stable) and cuts them into batches of the same size again, each padded on the
right to its own longest text, so the forward passes compute little more than the real tokens.

What a batch is stays as it was: the same keys, the same dtypes, the same texts; only their
order and padding change. Right padding leaves every real token's activations as they were in a
model that masks padding (an encoder's attention, a decoder's causal mask); a left-padded
text's tokens now start at position 0, as the text alone would. The statistics of the real
tokens are those of the user's batches up to the order of their sums (float rounding).

Only the statistics read the regrouped batches; finetuning and the losses read the user's.
Batches it cannot read this way (no ``attention_mask``, a mask with holes, a per-token tensor
of another length, tensors that are not per-text) are returned as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["PAD_VALUES", "regrouped"]

#: What padding holds per key (other keys: 0); ``input_ids`` pads with the value the user's
#: padding held, where there was any.
PAD_VALUES = {"attention_mask": 0, "labels": -100}


def regrouped(batches: Iterable) -> Iterable:
    """``batches`` regrouped by length (see the module docstring), or ``batches`` itself.

    Args:
        batches: calibration batches: dicts with an ``attention_mask`` of ``(texts, tokens)``
            and other per-token tensors of that shape (``input_ids``, ``token_type_ids``, ...)
            or per-text ones (first dimension ``texts``).

    Returns:
        A list of batches of the size of the largest given, texts sorted by length and padded
        on the right (texts without a real token left out); or ``batches`` unchanged when they
        are not of that form.

    Example:
        >>> ids = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0]])
        >>> batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
        >>> [b["input_ids"].tolist() for b in regrouped([batch, batch])]
        [[[8], [8]], [[5, 6, 7], [5, 6, 7]]]
    """
    if not isinstance(batches, (list, tuple)):
        first = next(iter(batches), None)
        if not (isinstance(first, Mapping) and "attention_mask" in first):
            return batches
        original, batches = batches, list(batches)  # a loader of token batches: read once
    else:
        original = batches
    texts: list[dict[str, torch.Tensor]] = []
    keys: frozenset[str] | None = None
    pads: dict[str, int] = {}
    size = 0
    for batch in batches:
        found = _texts(batch, pads)
        if found is None or (keys is not None and found[1] != keys):
            return original
        keys = found[1]
        texts += [t for t in found[0] if len(t["attention_mask"])]
        size = max(size, len(found[0]))
    if not texts:
        return original
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]["attention_mask"]))
    return [_padded([texts[i] for i in order[start:start + size]], keys, pads)
            for start in range(0, len(order), size)]


def _texts(batch, pads: dict[str, int]) -> tuple[list[dict], frozenset[str]] | None:
    """The texts of one batch (each its real tokens and its per-text values) and the batch's
    per-token keys; ``None`` for a batch of another form."""
    if not isinstance(batch, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in batch.values()):
        return None
    mask = batch.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return None
    count = mask.shape[0]
    if any(v.ndim == 0 or v.shape[0] != count for v in batch.values()):
        return None
    real = mask != 0
    if not _one_run(real):
        return None
    per_token = frozenset(k for k, v in batch.items() if v.shape[:2] == mask.shape)
    ids = batch.get("input_ids")
    if "input_ids" in per_token and bool((~real).any()):
        pads.setdefault("input_ids", int(ids[~real][0]))
    first, kept = real.int().argmax(dim=1), real.sum(dim=1)
    texts = []
    for i in range(count):
        start, stop = int(first[i]), int(first[i] + kept[i])
        texts.append({k: v[i, start:stop] if k in per_token else v[i]
                      for k, v in batch.items()})
    return texts, per_token


def _one_run(real: torch.Tensor) -> bool:
    """Whether each row's real tokens are one run (padding on the left, the right or both)."""
    starts = (real[:, 1:] & ~real[:, :-1]).sum(dim=1) + real[:, 0].long()
    return bool((starts <= 1).all())


def _padded(texts: list[dict[str, torch.Tensor]], per_token: frozenset[str],
            pads: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """One batch of ``texts``, the per-token values padded on the right to the longest."""
    length = max(len(t["attention_mask"]) for t in texts)
    batch = {}
    for key, first in texts[0].items():
        if key not in per_token:
            batch[key] = torch.stack([t[key] for t in texts])
            continue
        fill = pads.get(key, PAD_VALUES.get(key, 0))
        out = torch.full((len(texts), length, *first.shape[1:]), fill, dtype=first.dtype)
        for i, t in enumerate(texts):
            out[i, :len(t[key])] = t[key]
        batch[key] = out
    return batch
