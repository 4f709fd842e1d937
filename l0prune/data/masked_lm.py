"""Validation batches for an encoder's masked-language-model loss.

A BERT-class encoder is trained to predict tokens hidden behind its mask token. Its loss on held
out text is that prediction's cross-entropy at the hidden positions. For a loss tolerance the
dense and the pruned model must be judged on the same positions, so :func:`masked_lm_batches`
hides a fixed draw: in every batch, each real token (``attention_mask`` 1, not a special token)
is hidden with probability ``probability`` (BERT's 0.15) by a seeded generator, at least one
per sequence; ``labels`` hold the hidden tokens and ``-100`` elsewhere, so the model's own loss
(``model(**batch).loss``, what :func:`l0prune.prune` uses by default) is the masked-LM loss.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import torch

__all__ = ["masked_lm_batches"]


def _hidden(eligible: torch.Tensor, probability: float,
            generator: torch.Generator) -> torch.Tensor:
    """A draw over ``eligible`` (batch x tokens) with at least one position per sequence that
    has one (its first, when the draw picked none)."""
    drawn = (torch.rand(eligible.shape, generator=generator) < probability) & eligible
    empty = ~drawn.any(dim=1) & eligible.any(dim=1)
    first = eligible.int().argmax(dim=1)
    drawn[empty.nonzero().flatten(), first[empty]] = True
    return drawn


def masked_lm_batches(
    batches: Iterable[Mapping[str, torch.Tensor]],
    mask_token_id: int,
    *,
    probability: float = 0.15,
    seed: int = 0,
    special_ids: Collection[int] = (),
) -> list[dict[str, torch.Tensor]]:
    """``batches`` with a fixed draw of their tokens hidden and ``labels`` to predict them.

    Args:
        batches: dict batches with ``input_ids`` (and ``attention_mask`` where padded).
        mask_token_id: the tokenizer's ``mask_token_id``.
        probability: the share of real tokens hidden, in (0, 1].
        seed: seeds the draw.
        special_ids: tokens never hidden (the tokenizer's ``all_special_ids``).

    Returns:
        New batches: ``input_ids`` with the hidden tokens replaced by ``mask_token_id``,
        ``labels`` (the hidden tokens, ``-100`` elsewhere) and the other entries as they were.

    Raises:
        ValueError: for a batch without ``input_ids`` or a probability outside (0, 1].

    Example:
        >>> batch = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
        >>> out = masked_lm_batches([batch], mask_token_id=1, probability=0.5, seed=0)[0]
        >>> out["input_ids"].tolist(), out["labels"].tolist()
        ([[1, 6, 1, 1]], [[5, -100, 7, 8]])
    """
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not (
        0 < probability <= 1
    ):
        raise ValueError(f"probability must be in (0, 1], got {probability!r}")
    generator = torch.Generator().manual_seed(seed)
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.int64)
    out = []
    for batch in batches:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise ValueError("masked-LM batches must be dicts with 'input_ids'")
        ids = batch["input_ids"]
        eligible = ~torch.isin(ids, special)
        mask = batch.get("attention_mask")
        if mask is not None:
            eligible &= mask != 0
        hidden = _hidden(eligible, probability, generator)
        out.append({**batch, "input_ids": ids.masked_fill(hidden, mask_token_id),
                    "labels": ids.masked_fill(~hidden, -100)})
    return out
