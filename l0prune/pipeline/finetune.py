"""Masked finetuning: train a pruned model with its masks fixed.

For the duration of the training every pruned layer is in ``torch.nn.utils.prune``'s form
(:func:`~l0prune.model.masks.reparametrized`): it computes ``weight = weight_orig * weight_mask``
before every forward, so the gradient of ``weight_orig`` is zero off the mask and the pruned
weights stay exactly zero whatever the optimizer does; the masks are buffers, never trained. At
the end each layer holds its pruned weight in place again, the mask as bits beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from l0prune.data.batches import LossFn, check_data, forward, to_device, unchanged_generators
from l0prune.model.masks import refresh, reparametrized

__all__ = ["Finetune", "FinetuneResult", "masked_finetune"]

_OPTIMIZERS: dict[str, Callable] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


@dataclass(frozen=True)
class Finetune:
    """How to finetune after pruning.

    Args:
        data: training batches (re-iterable); ``None``: the calibration batches.
        epochs: passes over ``data``; give this or ``steps`` (default: 1 epoch).
        steps: optimizer steps (cycling over ``data`` as needed).
        lr: learning rate.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        weight_decay: the optimizer's weight decay.
        keep_best: when there is validation data, validate before finetuning and after every
            epoch and keep the best checkpoint (finetuning then never raises the loss).

    Example:
        >>> Finetune(epochs=10, lr=1e-3).optimizer
        'adam'
    """

    data: Iterable | None = None
    epochs: int | None = None
    steps: int | None = None
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    keep_best: bool = True

    def __post_init__(self):
        if self.epochs is not None and self.steps is not None:
            raise ValueError(
                f"give Finetune epochs= or steps=, not both (got epochs={self.epochs!r}, "
                f"steps={self.steps!r})"
            )
        for name in ("epochs", "steps"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"Finetune {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"Finetune lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"Finetune optimizer must be one of {sorted(_OPTIMIZERS)}, got {self.optimizer!r}"
            )
        wd = self.weight_decay
        if not (isinstance(wd, (int, float)) and math.isfinite(wd) and wd >= 0):
            raise ValueError(f"Finetune weight_decay must be a number >= 0, got {wd!r}")
        if not isinstance(self.keep_best, bool):
            raise ValueError(f"Finetune keep_best must be True or False, got {self.keep_best!r}")
        if self.data is not None:
            check_data(self.data, "Finetune data")


@dataclass
class FinetuneResult:
    """What :func:`masked_finetune` did.

    Attributes:
        steps: optimizer steps taken.
        loss_before: validation loss before finetuning (``None`` without ``validate``).
        loss: validation loss of the model as left (``None`` without ``validate``).
        epoch: the checkpoint left: 0 is the model before finetuning, ``e`` the end of the
            ``e``-th pass over the data (the last one unless ``keep_best`` chose another).
    """

    steps: int
    loss_before: float | None
    loss: float | None
    epoch: int


def masked_finetune(
    model: nn.Module,
    config: Finetune,
    loss_fn: LossFn,
    device: torch.device,
    *,
    data: Iterable | None = None,
    validate: Callable[[], float] | None = None,
    seed: int = 0,
) -> FinetuneResult:
    """Train every trainable parameter of ``model`` on ``config.data``; masks stay fixed.

    Runs in train mode and leaves the model in eval mode. Random draws (dropout, a shuffling
    loader without its own generator) come from a forked RNG seeded with ``seed``; a loader with
    its own generator gets that generator's state back at the end. So a call repeats whatever
    ran before it (every trial of a search sees the same batches), and the caller's RNG states
    are untouched. With ``validate`` and ``config.keep_best``, the model is validated before
    finetuning and after every epoch (every pass over the data), and the best of these
    checkpoints is the one left: finetuning never makes the validation loss worse.

    Args:
        model: the (pruned) model.
        config: the :class:`Finetune` settings.
        loss_fn: ``loss_fn(outputs, batch) -> scalar``.
        device: where batches go.
        data: batches used when ``config.data`` is ``None``.
        validate: returns the current validation loss (the model is in eval mode then).
        seed: the RNG seed.

    Returns:
        A :class:`FinetuneResult`.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> batches = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
        >>> from l0prune.data.batches import cross_entropy
        >>> masked_finetune(model, Finetune(steps=3), cross_entropy, torch.device("cpu"),
        ...                 data=batches).steps
        3
    """
    batches = config.data if config.data is not None else data
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("finetune needs trainable parameters; the model has none")
    optimizer = _OPTIMIZERS[config.optimizer](
        params, lr=config.lr, weight_decay=config.weight_decay
    )
    checkpoints = validate is not None and config.keep_best
    steps = passes = best_pass = 0
    done = False
    cuda = [device.index or 0] if device.type == "cuda" else []
    with reparametrized(model):
        model.eval()
        before = best = validate() if validate is not None else None
        best_state = _state(model) if checkpoints else None
        with torch.random.fork_rng(devices=cuda), unchanged_generators(batches):
            torch.manual_seed(seed)
            try:
                while not done:
                    model.train()
                    for batch in batches:
                        _step(model, optimizer, loss_fn, batch, device, steps, config.lr)
                        steps += 1
                        if steps == config.steps:
                            break
                    passes += 1
                    model.eval()
                    if checkpoints:
                        loss = validate()
                        if loss < best:
                            best, best_state, best_pass = loss, _state(model), passes
                    if config.steps is not None:
                        done = steps == config.steps
                    else:
                        done = passes == (config.epochs or 1)
            finally:
                optimizer.zero_grad(set_to_none=True)
                model.eval()
        if checkpoints:
            model.load_state_dict(best_state)
        for module in model.modules():
            refresh(module)
    loss = best if checkpoints else (validate() if validate is not None else None)
    return FinetuneResult(steps, before, loss, best_pass if checkpoints else passes)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _step(model, optimizer, loss_fn, batch, device, step: int, lr: float) -> None:
    batch = to_device(batch, device)
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(forward(model, batch, device), batch)
    if not bool(torch.isfinite(loss.detach()).all()):
        raise ValueError(
            f"finetuning diverged: the loss is {float(loss.detach())} at step {step + 1}; "
            f"lower Finetune lr (now {lr})"
        )
    loss.backward()
    optimizer.step()
