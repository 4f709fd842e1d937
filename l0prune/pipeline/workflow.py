"""What the prune-retrain workflows (:mod:`l0prune.pipeline.gradual`,
:mod:`l0prune.pipeline.l0_training`) share: checking their common arguments, the run's device, the
targets, and the model's state held off the run (a passing step kept while the run goes on).

The workflows train the model, so they validate on held-out data and report every step as a
:class:`~l0prune.report.Trial`; the report is a :class:`~l0prune.report.PruneReport` like
:func:`l0prune.prune`'s, so everything that reads one (tables, JSON, the command line's plots)
reads theirs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from l0prune.data.batches import check_data
from l0prune.model.masks import refresh
from l0prune.model.statistics import discover
from l0prune.model.targets import Target, select_targets
from solvers import Budget

from .finetune import Finetune

__all__ = [
    "Kept", "budget_text", "check_common", "finetune_config", "fraction", "run_device",
    "sparsity_of", "targets_of",
]


def fraction(value, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a number in [0, 1).

    Example:
        >>> fraction(0.5, "sparsity")
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and 0 <= value < 1
    ):
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def check_common(model, train, sparsity, alpha, validation, *, needs_validation: bool) -> None:
    """The arguments every workflow takes: the model, its data, the target or tolerance.

    Args:
        model: must be an ``nn.Module``.
        train: re-iterable training batches.
        sparsity: a fraction in [0, 1), or ``None``.
        alpha: a tolerance ``>= 1``, or ``None``; one of the two must be given.
        validation: re-iterable batches; needed with ``alpha`` (and by ``needs_validation``).
        needs_validation: the workflow reports the validation loss of every step.

    Returns:
        None; raises ``ValueError`` naming the argument, the expected form and the value.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    check_data(train, "train")
    if sparsity is None and alpha is None:
        raise ValueError("give sparsity= (a fraction in [0, 1)) or alpha= (a loss tolerance >= 1, "
                         "with validation=)")
    if sparsity is not None:
        fraction(sparsity, "sparsity")
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, (int, float))
        or not (math.isfinite(alpha) and alpha >= 1)
    ):
        raise ValueError(f"alpha must be a number >= 1, got {alpha!r}")
    if validation is None and (alpha is not None or needs_validation):
        why = "alpha" if alpha is not None else "the loss of every step"
        raise ValueError(f"validation= is needed for {why}: give held-out batches")
    if validation is not None:
        check_data(validation, "validation")


def finetune_config(finetune) -> Finetune | None:
    """A :class:`~l0prune.pipeline.finetune.Finetune` from itself, a dict of its fields, or
    ``None``.

    Example:
        >>> finetune_config({"epochs": 2}).epochs
        2
    """
    if finetune is None or isinstance(finetune, Finetune):
        return finetune
    if isinstance(finetune, Mapping):
        try:
            return Finetune(**finetune)
        except TypeError as err:
            raise ValueError(f"finetune has an unknown field: {err}") from None
    raise ValueError(
        f"finetune must be a Finetune, a dict of its fields or None, got {type(finetune).__name__}"
    )


def run_device(model: nn.Module, device) -> torch.device:
    """The run's device: ``device`` if given (it must exist here and hold data), else the
    model's.

    Example:
        >>> run_device(nn.Linear(2, 2), None)
        device(type='cpu')
    """
    if device is None:
        return next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device or its name, got {device!r}") from None
    if device.type == "meta":
        raise ValueError(
            "device must hold data to compute on, such as 'cpu' or 'cuda'; got 'meta'"
        )
    try:  # exists, and takes a CPU tensor's data in place (as model.to needs)
        torch.empty(0).data = torch.empty(0, device=device)
    except Exception as err:  # torch raises AssertionError or RuntimeError by backend
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"device {str(device)!r} is not available here ({first}); give one that is, such "
            f"as 'cpu'"
        ) from None
    return device


def targets_of(model: nn.Module, train: Iterable, targets, ignore,
               device: torch.device) -> tuple[list[Target], object]:
    """The layers a workflow prunes (as :func:`l0prune.prune` chooses them) and the model's
    :class:`~l0prune.model.statistics.Discovery`, from one forward pass on a training batch.

    Grouped convolutions are refused: a workflow's masks are per layer.
    """
    discovery = discover(model, next(iter(train)), device)
    chosen = select_targets(model, discovery.order, targets, ignore)
    grouped = [t.name for t in chosen if t.groups > 1]
    if grouped:
        raise ValueError(f"targets {grouped} are grouped convolutions, which this workflow does "
                         "not prune; leave them out with ignore=")
    return chosen, discovery


def budget_text(family: Budget) -> str:
    """``Unstructured()``, ``Structured(group=1)``: the budget without its unset fields.

    Example:
        >>> from solvers import Structured
        >>> budget_text(Structured(group=1))
        'Structured(group=1)'
    """
    values = (f"{f.name}={getattr(family, f.name)!r}" for f in fields(family))
    return f"{type(family).__name__}({', '.join(v for v in values if not v.endswith('=None'))})"


def sparsity_of(targets: Sequence[Target]) -> float:
    """Fraction of the targets' weights that are zero under their masks (0 for dense layers).

    Example:
        >>> sparsity_of([Target("l", nn.Linear(2, 2))])
        0.0
    """
    kept = total = 0
    for t in targets:
        mask = getattr(t.module, "weight_mask", None)
        kept += t.total if mask is None else int(mask.count_nonzero())
        total += t.total
    return 1.0 - kept / total


@dataclass
class Kept:
    """A model state held on the CPU while a run goes on, and what it scored.

    Attributes:
        state: the model's ``state_dict``, copied to the CPU (``None`` when not kept).
        sparsity: its sparsity over the targets.
        loss: its validation loss.
        loss_before_finetune: the loss before its last finetuning, if any.
        layers: per-layer figures of the step that made it (name -> (kept, error, seconds)).
    """

    state: dict[str, torch.Tensor] | None
    sparsity: float
    loss: float
    loss_before_finetune: float | None
    layers: dict[str, tuple[int, float, float]]

    @classmethod
    def of(cls, model: nn.Module, *, copy: bool = True, **figures) -> Kept:
        """``model``'s figures, and with ``copy`` its state now (a run that never goes back
        to an earlier model keeps only the figures)."""
        state = ({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                 if copy else None)
        return cls(state=state, **figures)

    def put_back(self, model: nn.Module) -> None:
        """Load the state into ``model`` (same structure: the same layers masked)."""
        model.load_state_dict(self.state)
        for module in model.modules():
            refresh(module)
