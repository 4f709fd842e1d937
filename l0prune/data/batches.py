"""Batches as users hold them, and the forward pass and loss over them.

A batch is one of:

- a tensor: the model's input;
- a tuple or list: the first item is the input, the last the target (``(x, y)``);
- a dict: keyword inputs, Hugging Face style (``model(**batch)``); ``attention_mask`` marks the
  real tokens and ``labels`` is the target.

A data argument (calibration, validation, finetuning data) is any re-iterable of batches: a
``DataLoader`` or a list, never a one-shot generator, because it is read more than once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "LossFn",
    "attention_mask",
    "batch_size",
    "check_data",
    "cross_entropy",
    "forward",
    "mean_loss",
    "to_device",
    "unchanged_generators",
]

#: ``loss_fn(outputs, batch) -> scalar tensor``
LossFn = Callable[[object, object], torch.Tensor]


@contextmanager
def unchanged_generators(*data: Iterable):
    """Give the generators a ``DataLoader`` shuffles with (its own, its samplers') their state back
    on exit: reading the data inside then leaves the caller's loaders as they were, and two reads
    that start from the same state see the same batches. Takes any number of data arguments
    (``None`` and lists are passed over)."""
    found = {}
    owners = [o for d in data for o in (d, getattr(d, "sampler", None),
                                        getattr(d, "batch_sampler", None))]
    for owner in owners:
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            found[id(generator)] = generator
    saved = [(generator, generator.get_state()) for generator in found.values()]
    try:
        yield
    finally:
        for generator, state in saved:
            generator.set_state(state)


def check_data(data: Iterable, name: str) -> None:
    """Raise ``ValueError`` unless ``data`` is a re-iterable holding at least one batch.

    Args:
        data: the batches.
        name: the argument's name, for the message.

    Returns:
        None.

    Example:
        >>> check_data([torch.zeros(2, 3)], "calibration")
    """
    if data is None or isinstance(data, (torch.Tensor, Mapping, str)):
        raise ValueError(
            f"{name} must be a re-iterable of batches (a DataLoader or a list), "
            f"got {type(data).__name__}"
        )
    with unchanged_generators(data):
        try:
            iterator = iter(data)
        except TypeError:
            raise ValueError(
                f"{name} must be a re-iterable of batches (a DataLoader or a list), "
                f"got {type(data).__name__}"
            ) from None
        if isinstance(data, Iterator) or iterator is data:
            raise ValueError(
                f"{name} must be re-iterable (a DataLoader or a list): it is read more than "
                f"once, got a one-shot {type(data).__name__}"
            )
        empty = next(iterator, None) is None
    if empty:
        raise ValueError(f"{name} is empty: it must hold at least one batch")


def to_device(batch, device: torch.device):
    """``batch`` with every tensor in it moved to ``device`` (tuples, lists and dicts kept).

    Args:
        batch: a batch.
        device: the target device.

    Returns:
        The moved batch (other items as they are).

    Example:
        >>> to_device((torch.zeros(1), 3), torch.device("cpu"))[1]
        3
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device) for item in batch)
    return batch


def _split(batch) -> tuple[tuple, dict]:
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return (batch[0],), {}
    raise ValueError(
        "a batch must be a tensor, a non-empty tuple or list (input first, target last) or a "
        f"dict of keyword inputs, got {type(batch).__name__}"
        + (" of length 0" if isinstance(batch, (tuple, list)) else "")
    )


def forward(model: nn.Module, batch, device: torch.device):
    """Run ``model`` on one batch (moved to ``device``) and return its outputs.

    Args:
        model: the model.
        batch: a tensor, an ``(input, ..., target)`` tuple or list, or a dict of keyword inputs.
        device: where the inputs go.

    Returns:
        Whatever the model returns.

    Example:
        >>> forward(nn.Linear(3, 2), (torch.zeros(4, 3), torch.zeros(4)), torch.device("cpu")).shape
        torch.Size([4, 2])
    """
    args, kwargs = _split(to_device(batch, device))
    return model(*args, **kwargs)


def attention_mask(batch) -> torch.Tensor | None:
    """The batch's ``attention_mask`` (1 for real tokens, 0 for padding), if it has one.

    Args:
        batch: a batch.

    Returns:
        The mask of a dict batch, else ``None``.

    Example:
        >>> attention_mask({"input_ids": torch.zeros(1, 2), "attention_mask": torch.ones(1, 2)})
        tensor([[1., 1.]])
    """
    if isinstance(batch, Mapping):
        return batch.get("attention_mask")
    return None


def batch_size(batch) -> int:
    """Number of examples in a batch: the first dimension of its first input tensor.

    Args:
        batch: a batch.

    Returns:
        The count.

    Example:
        >>> batch_size((torch.zeros(5, 3), torch.zeros(5)))
        5
    """
    args, kwargs = _split(batch)
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]) if value.ndim else 1
    raise ValueError(f"a batch must hold at least one tensor input, got {type(batch).__name__}")


def _target(batch):
    if isinstance(batch, Mapping):
        return batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[-1]
    return None


def cross_entropy(outputs, batch) -> torch.Tensor:
    """The default loss: the model's own ``loss`` if it returns one, else cross-entropy.

    The logits are ``outputs`` (a tensor), ``outputs.logits`` or ``outputs[0]``; the target is
    the batch's last item or its ``labels`` entry. Positions labelled ``-100`` are ignored.

    Args:
        outputs: the model's outputs on ``batch``.
        batch: the batch, which carries the target.

    Returns:
        The mean loss, a scalar tensor.

    Example:
        >>> cross_entropy(torch.zeros(2, 4), (None, torch.tensor([0, 3]))).item()  # log(4)
        1.3862943649291992
    """
    if not isinstance(outputs, torch.Tensor):
        loss = getattr(outputs, "loss", None)
        if loss is not None:
            return loss
    target = _target(batch)
    if target is None:
        raise ValueError(
            "the default loss (cross-entropy) needs (input, target) batches or a 'labels' entry; "
            "give loss_fn=(outputs, batch) -> scalar for these batches"
        )
    if isinstance(outputs, torch.Tensor):
        logits = outputs
    elif getattr(outputs, "logits", None) is not None:
        logits = outputs.logits
    else:
        logits = outputs[0]
    target = target.to(logits.device)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


@torch.no_grad()
def mean_loss(model: nn.Module, data: Iterable, loss_fn: LossFn, device: torch.device) -> float:
    """The loss of ``model`` over ``data``, averaged over examples (batches weighted by size).

    The model runs in whatever mode it is in; callers put it in ``eval()`` mode.

    Args:
        model: the model.
        data: re-iterable batches.
        loss_fn: ``loss_fn(outputs, batch) -> scalar``.
        device: where the batches go.

    Returns:
        The mean loss.

    Example:
        >>> data = [(torch.zeros(2, 3), torch.tensor([0, 1]))]
        >>> model = nn.Linear(3, 2, bias=False).eval()
        >>> round(mean_loss(model, data, cross_entropy, torch.device("cpu")), 4)
        0.6931
    """
    total = weight = 0.0
    for batch in data:
        batch = to_device(batch, device)
        loss = loss_fn(forward(model, batch, device), batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(
                f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
            )
        n = batch_size(batch)
        total += float(loss) * n
        weight += n
    if weight == 0:
        raise ValueError("the data holds no examples")
    value = total / weight
    if not math.isfinite(value):
        raise ValueError(f"the loss is not finite ({value}); check the model, data and loss_fn")
    return value
