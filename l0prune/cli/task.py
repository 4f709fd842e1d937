"""What a prune run works on: a model, its data, its loss, and how to score it beyond the loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .config import Settings
from .references import load_batches, load_callable, load_model

__all__ = ["Task", "user_task"]


@dataclass
class Task:
    """A model to prune and everything the run needs around it.

    Attributes:
        description: one line naming the model and data, for the report.
        model: the trained model (pruned in place).
        calibration: batches for the layer statistics.
        validation: batches for the loss, or ``None``: no loss is measured (a fixed
            sparsity).
        loss_fn: ``loss_fn(outputs, batch) -> scalar``, or ``None`` for cross-entropy.
        finetune_data: finetuning batches; ``None``: the calibration batches.
        metrics: extra scores of a model, such as test accuracy (name -> value).
        save_model: writes the pruned model in its own folder format (``model/`` of a Hugging
            Face model), or ``None``.
    """

    description: str
    model: nn.Module
    calibration: Iterable
    validation: Iterable | None
    loss_fn: Callable | None = None
    finetune_data: Iterable | None = None
    metrics: Callable[[nn.Module], dict[str, float]] = field(default=lambda model: {})
    save_model: Callable[[nn.Module, Path], None] | None = None


def user_task(settings: Settings) -> Task:
    """The task of ``--model MODULE:NAME``, ``--calibration``, ``--validation`` and ``--loss``
    (an ``hf:`` model's is :func:`~l0prune.cli.hf_task.hf_task`)."""
    loss_fn = load_callable(settings.loss, "--loss") if settings.loss is not None else None
    return Task(
        description=f"{settings.model} (calibration {settings.calibration}, validation "
                    f"{settings.validation})",
        model=load_model(settings.model),
        calibration=load_batches(settings.calibration, "--calibration"),
        validation=None if settings.validation is None else load_batches(settings.validation,
                                                                          "--validation"),
        loss_fn=loss_fn,
    )
