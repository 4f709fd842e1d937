"""The loss of a causal language model, and perplexity.

A causal LM predicts every token from the ones before it. Its loss on a window of tokens
``t_1 .. t_T`` is the mean next-token negative log-likelihood

    L = -1/(T-1) * sum_{i=2..T} log p(t_i | t_1 .. t_{i-1})      (nats per token)

and its perplexity is ``exp(L)``. A loss tolerance ``L' <= alpha * L`` therefore bounds the
perplexity ratio by ``ppl' / ppl = exp(L' - L) <= exp((alpha - 1) L) = ppl^(alpha - 1)``: with a
dense perplexity of 20, ``alpha = 1.02`` allows the pruned model 20^0.02 = 1.062 times it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["next_token_nll", "perplexity_ratio_bound"]


def next_token_nll(outputs, batch) -> torch.Tensor:
    """Mean next-token negative log-likelihood of a causal LM on one batch of token windows.

    Token-weighted within the batch: positions whose target is padding (``attention_mask`` 0)
    or labelled ``-100`` are left out. The logits are ``outputs.logits`` (or ``outputs[0]``, or
    ``outputs`` itself); the targets are the batch's ``labels`` when it has them, else its
    ``input_ids``, shifted by one. It carries ``perplexity = True``, which tells
    :func:`l0prune.prune` to report ``exp`` of the loss as perplexity.

    Args:
        outputs: the model's outputs on ``batch``.
        batch: a dict batch with ``input_ids`` (batch x tokens).

    Returns:
        The mean loss in nats per token, a scalar tensor (float32 or wider).

    Example:
        >>> logits = torch.zeros(1, 3, 5)          # uniform over 5 tokens
        >>> round(next_token_nll(logits, {"input_ids": torch.tensor([[1, 2, 3]])}).item(), 4)
        1.6094
    """
    if isinstance(outputs, torch.Tensor):
        logits = outputs
    elif getattr(outputs, "logits", None) is not None:
        logits = outputs.logits
    else:
        logits = outputs[0]
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise ValueError("next_token_nll needs dict batches with 'input_ids'")
    targets = batch.get("labels", batch["input_ids"]).to(logits.device)[:, 1:]
    keep = targets != -100
    mask = batch.get("attention_mask")
    if mask is not None:
        keep &= mask.to(logits.device)[:, 1:] != 0
    losses = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        targets.clamp(min=0).reshape(-1), reduction="none",
    )
    return (losses * keep.reshape(-1)).sum() / keep.sum().clamp(min=1)


next_token_nll.perplexity = True


def perplexity_ratio_bound(dense_perplexity: float, alpha: float) -> float:
    """The largest ``ppl' / ppl`` that ``L' <= alpha * L`` allows: ``ppl^(alpha - 1)``.

    Example:
        >>> round(perplexity_ratio_bound(20.0, 1.02), 4)
        1.0617
    """
    return dense_perplexity ** (alpha - 1.0)
