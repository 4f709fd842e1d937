"""``l0prune.prune``: prune a trained torch model to a sparsity or within a loss tolerance.

The run, in order (DESIGN.md 2.6 and 3):

1. check the arguments; capture the model (:class:`~l0prune.snapshot.Snapshot`);
2. one forward pass on a calibration batch finds the prunable layers, the order they run in and
   which of them read the same input (:func:`~l0prune.statistics.discover`); the targets are
   chosen from them (:func:`~l0prune.targets.select_targets`);
3. with ``sparsity`` (or a sized budget): every target is pruned once
   (:class:`~l0prune.layerwise.LayerPruner`), then finetuned if asked;
   with ``alpha``: the search of :mod:`l0prune.search`, each trial starting from the dense model
   and finetuned if asked; the sparsest trial within ``alpha`` is put back at the end;
4. the report.

Any exception (a bad batch, a solver error, ``KeyboardInterrupt``) puts the model back exactly as
it was before the exception propagates. The price is memory: the snapshot holds a copy of the
model's parameters and buffers on its device for the whole run (and the search keeps its best
trial's state on the CPU).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn
from tqdm import tqdm

from solvers import NM, Budget, Unstructured, methods

from . import allocation
from .batches import LossFn, check_data, cross_entropy, mean_loss
from .finetune import Finetune, masked_finetune
from .layerwise import LayerPruner, LayerResult, method_options
from .masks import attach, refresh
from .report import LayerReport, PruneReport, Trial
from .search import GRID, two_stage
from .snapshot import Snapshot
from .statistics import Moments, discover
from .targets import Target, select_targets
from .threads import using_threads

__all__ = ["prune"]


def prune(
    model: nn.Module,
    calibration: Iterable,
    *,
    sparsity: float | Mapping[str, float] | None = None,
    alpha: float | None = None,
    validation: Iterable | None = None,
    loss_fn: LossFn | None = None,
    method: str = "admm",
    budget: Budget | None = None,
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
    sequential: bool = True,
    finetune: Finetune | Mapping | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    options: Mapping | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> PruneReport:
    """Prune ``model`` in place, layer by layer, by solving each layer's pruning problem.

    Give exactly one of ``sparsity`` (a fixed target) or ``alpha`` (the sparsest model whose
    validation loss is at most ``alpha`` times the dense one), or a sized ``budget`` such as
    ``NM(2, 4)``. Masks are stored the ``torch.nn.utils.prune`` way.

    Args:
        model: a trained torch model (changed in place).
        calibration: re-iterable batches (a ``DataLoader`` or a list) whose inputs give each
            layer's statistics: tensors, ``(input, ..., target)`` tuples or dicts of keyword
            inputs (``model(**batch)``; ``attention_mask`` zeros are left out).
        sparsity: fraction of each target's weights removed, in [0, 1); or a dict of fractions
            by layer name (then the dict's keys are the targets unless ``targets`` is given).
        alpha: loss tolerance, ``>= 1``; needs ``validation``.
        validation: re-iterable batches for the loss; with ``sparsity``, the report gives the
            dense and pruned losses on them.
        loss_fn: ``loss_fn(outputs, batch) -> scalar``; default: the model's own ``loss``
            output or cross-entropy against the batch's last item / ``labels``.
        method: a solver of :func:`solvers.methods` (``"admm"``, ``"iht"``, ``"obs"``,
            ``"wanda"``, ``"magnitude"``, ...).
        budget: the sparsity pattern: ``Unstructured()`` (default), ``PerRow()``,
            ``Structured(group=g)`` (``g`` input features; whole channels on a convolution),
            or sized, like ``NM(2, 4)``, applied as given to every target.
        targets: regex (or list) matched against full layer names (``re.fullmatch``); default:
            every ``Linear`` / ``Conv1d`` / ``Conv2d`` / ``Conv1D`` that runs, except the last
            to run (the output head).
        ignore: regex (or list) of layer names left dense.
        sequential: prune layer after layer: each layer sees the layers before it already
            pruned and is fitted to reproduce the dense model's output from what it sees (one
            calibration pass per group of layers sharing an input; see
            :mod:`l0prune.layerwise`); ``False``: every layer's statistics from the dense model,
            in one pass.
        finetune: a :class:`~l0prune.finetune.Finetune` (or a dict of its fields): masked
            finetuning after pruning; with ``alpha``, after every trial of the search.
        seed: seeds finetuning and solvers that draw random numbers.
        device: where the run computes; default: the model's device. The model is moved there
            (and back if the run fails).
        options: options for the solver method (see its docstring).
        progress: show progress bars.
        threads: torch CPU threads for the run (torch's setting is put back after it);
            default: torch's count capped by the CPUs this process may use (affinity and
            cgroup quota, :func:`l0prune.threads.default_threads`). The report records it.

    Returns:
        A :class:`~l0prune.report.PruneReport`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import l0prune
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> data = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
        >>> report = l0prune.prune(model, data, sparsity=0.5, method="wanda", progress=False)
        >>> round(report.sparsity, 2), torch.nn.utils.prune.is_pruned(model)
        (0.5, True)
    """
    start = time.perf_counter()
    _check_arguments(model, calibration, sparsity, alpha, validation, method, budget)
    _check_settings(loss_fn, sequential, seed, options, progress)
    with using_threads(threads) as count:
        report = _prune(model, calibration, sparsity, alpha, validation, loss_fn, method,
                        budget, targets, ignore, sequential, finetune, seed, device, options,
                        progress, start)
    report.threads = count
    return report


def _prune(model, calibration, sparsity, alpha, validation, loss_fn, method, budget, targets,
           ignore, sequential, finetune, seed, device, options, progress, start) -> PruneReport:
    """:func:`prune` after its arguments are checked, on the run's threads."""
    config = _finetune_config(finetune)
    family = budget if budget is not None else Unstructured()
    device, moved_from = _device(model, device)
    if moved_from is not None:
        model.to(device)
    snapshot = Snapshot(model)
    try:
        model.eval()
        discovery = discover(model, next(iter(calibration)), device)
        if isinstance(sparsity, Mapping):
            chosen = _dict_targets(model, discovery.order, sparsity, targets, ignore)
        else:
            chosen = select_targets(model, discovery.order, targets, ignore)
        _check_fits(chosen, family)
        pruner = LayerPruner(
            model, calibration, chosen, discovery, snapshot,
            method=method, options=method_options(method, options, seed),
            sequential=sequential, device=device, progress=progress,
        )
        run = _Run(
            model, pruner, snapshot, validation=validation, loss_fn=loss_fn or cross_entropy,
            finetune=config, calibration=calibration, device=device, seed=seed,
            progress=progress,
        )
        if alpha is not None:
            run.search(alpha, family)
        elif isinstance(sparsity, Mapping):
            run.fixed(allocation.per_layer(chosen, family, sparsity))
        elif sparsity is not None:
            run.fixed(allocation.uniform(chosen, family, sparsity))
        else:
            run.fixed({t.name: allocation.layer_family(t, family) for t in chosen})
        report = run.report(method, _budget_text(family), sequential, alpha, start)
    except BaseException:
        snapshot.restore()
        if moved_from is not None:
            model.to(moved_from)
        raise
    snapshot.restore_modes()
    return report


@dataclass
class _Outcome:
    """A pruned state: the layer results and losses, and (for the search) the state itself."""

    sparsity: float
    results: dict[str, LayerResult]
    loss: float | None
    loss_before_finetune: float | None
    state: dict[str, torch.Tensor] | None = None
    moments: dict[str, Moments] | None = None


class _Run:
    """One run's pruning, finetuning, evaluation and bookkeeping."""

    def __init__(self, model, pruner, snapshot, *, validation, loss_fn, finetune, calibration,
                 device, seed, progress):
        self.model, self.pruner, self.snapshot = model, pruner, snapshot
        self.validation, self.loss_fn, self.finetune = validation, loss_fn, finetune
        self.calibration, self.device, self.seed = calibration, device, seed
        self.progress = progress
        self.validation_passes = self.finetune_steps = 0
        self.trials: list[Trial] = []
        self.dense_loss: float | None = None
        self.limit = math.inf
        self.outcome: _Outcome | None = None  # the best so far
        self.current: _Outcome | None = None  # the one in the model
        self.bar: tqdm | None = None

    def evaluate(self) -> float:
        self.validation_passes += 1
        return mean_loss(self.model, self.validation, self.loss_fn, self.device)

    def apply(self, budgets: Mapping[str, Budget]) -> _Outcome:
        """Prune the (dense) model under ``budgets``, finetune, evaluate."""
        results = self.pruner.run(budgets)
        before = None
        if self.finetune is not None:
            done = masked_finetune(
                self.model, self.finetune, self.loss_fn, self.device, data=self.calibration,
                validate=self.evaluate if self.validation is not None else None, seed=self.seed,
            )
            self.finetune_steps += done.steps
            before, loss = done.loss_before, done.loss
        else:
            loss = self.evaluate() if self.validation is not None else None
        kept = sum(r.kept for r in results.values())
        total = sum(r.total for r in results.values())
        return _Outcome(1.0 - kept / total, results, loss, before)

    def fixed(self, budgets: Mapping[str, Budget]) -> None:
        if self.validation is not None:
            self.dense_loss = self.evaluate()
        self.outcome = self.apply(budgets)

    def search(self, alpha: float, family: Budget) -> None:
        """The two-stage search of :mod:`l0prune.search`; leaves the best trial in the model."""
        self.dense_loss = self.evaluate()
        if self.dense_loss <= 0:
            raise ValueError(
                f"alpha needs a positive dense validation loss, got {self.dense_loss:.6g}"
            )
        self.limit = alpha * self.dense_loss
        targets = self.pruner.targets
        total = sum(t.total for t in targets)

        def uniform(s: float) -> bool:
            return self._trial(allocation.uniform(targets, family, s), "uniform", s)

        def allocated(best_uniform: float):
            if self.outcome is None:
                return None
            self.pruner.moments = self.outcome.moments
            curves = self.pruner.curves(family, GRID)
            return lambda s: self._trial(
                allocation.spread(curves, int(round((1 - s) * total))), "allocated", s
            )

        with tqdm(desc="alpha search", unit="trial", disable=not self.progress) as self.bar:
            two_stage(uniform, allocated)
            if self.outcome is None:  # nothing passed: the dense model, as pruned at 0 %
                self._trial(allocation.uniform(targets, family, 0.0), "uniform", 0.0)
                self.outcome = self.current
            elif self.current is not self.outcome:
                self._put_back(self.outcome)

    def _trial(self, budgets: Mapping[str, Budget], stage: str, target: float) -> bool:
        """Prune the dense model under ``budgets``; keep the state if it is the best so far."""
        self.snapshot.restore()
        self.model.eval()
        outcome = self.current = self.apply(budgets)
        met = outcome.loss <= self.limit
        self.trials.append(Trial(
            stage, target, outcome.sparsity, outcome.loss, outcome.loss_before_finetune, met
        ))
        if met and (self.outcome is None or outcome.sparsity > self.outcome.sparsity):
            outcome.state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            outcome.moments = dict(self.pruner.moments)
            self.outcome = outcome
        self.bar.update()
        self.bar.set_postfix(stage=stage, sparsity=f"{outcome.sparsity:.3f}",
                             ratio=f"{outcome.loss / self.dense_loss:.4f}")
        return met

    def _put_back(self, outcome: _Outcome) -> None:
        """Make the model hold ``outcome``'s state again."""
        self.snapshot.restore()
        self.model.eval()
        for t in self.pruner.targets:
            result = outcome.results[t.name]
            attach(t.module, result.weight, result.mask)
        self.model.load_state_dict(outcome.state)
        for module in self.model.modules():
            refresh(module)
        outcome.loss = self.evaluate()

    def report(self, method: str, budget: str, sequential: bool, alpha: float | None,
               start: float) -> PruneReport:
        outcome = self.outcome
        layers = [
            LayerReport(r.name, list(r.shape), r.kept, r.total, r.relative_error, r.seconds)
            for r in outcome.results.values()
        ]
        return PruneReport(
            layers=layers, method=method, budget=budget, sequential=sequential,
            dense_loss=self.dense_loss, pruned_loss=outcome.loss,
            loss_before_finetune=outcome.loss_before_finetune, alpha=alpha,
            seconds=time.perf_counter() - start,
            calibration_passes=self.pruner.passes, validation_passes=self.validation_passes,
            finetune_steps=self.finetune_steps, trials=self.trials,
        )


def _budget_text(family: Budget) -> str:
    """``NM(n=2, m=4)``, ``Unstructured()``: the budget without its unset fields."""
    values = (f"{f.name}={getattr(family, f.name)!r}" for f in fields(family))
    return f"{type(family).__name__}({', '.join(v for v in values if not v.endswith('=None'))})"


def _device(model: nn.Module, device) -> tuple[torch.device, torch.device | None]:
    """The run's device, and the model's device if the model must move there."""
    current = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device is None:
        return current, None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device or its name, got {device!r}") from None
    return device, (current if device != current else None)


def _fraction(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and 0 <= value < 1
    ):
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def _check_arguments(model, calibration, sparsity, alpha, validation, method, budget) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if method not in methods():
        raise ValueError(f"method must be one of {methods()}, got {method!r}")
    if budget is not None and not isinstance(budget, Budget):
        raise ValueError(
            f"budget must be a solvers Budget (Unstructured(), PerRow(), NM(2, 4), "
            f"Structured(group=1)), got {budget!r}"
        )
    if sparsity is not None and alpha is not None:
        raise ValueError(
            f"give exactly one of sparsity= or alpha=, not both (got sparsity={sparsity!r}, "
            f"alpha={alpha!r})"
        )
    sized = budget is not None and budget.sized
    if sized and (sparsity is not None or alpha is not None):
        what = "sparsity" if sparsity is not None else "alpha"
        raise ValueError(
            f"budget={budget!r} already fixes the sparsity; give it without {what}= or give an "
            f"unsized budget (Unstructured(), PerRow(), Structured(group=...))"
            + (" (N:M is always sized)" if isinstance(budget, NM) else "")
        )
    if sparsity is None and alpha is None and not sized:
        raise ValueError(
            "give sparsity= (a fraction in [0, 1) or a dict by layer name), alpha= (a loss "
            "tolerance >= 1, with validation=) or a sized budget such as NM(2, 4)"
        )
    if isinstance(sparsity, Mapping):
        if not sparsity:
            raise ValueError("sparsity must not be an empty dict")
        for name, value in sparsity.items():
            _fraction(value, f"sparsity[{name!r}]")
    elif sparsity is not None:
        _fraction(sparsity, "sparsity")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
            math.isfinite(alpha) and alpha >= 1
        ):
            raise ValueError(f"alpha must be a number >= 1 (a loss ratio), got {alpha!r}")
        if validation is None:
            raise ValueError("alpha needs validation= batches to measure the loss on")
    check_data(calibration, "calibration")
    if validation is not None:
        check_data(validation, "validation")


def _check_settings(loss_fn, sequential, seed, options, progress) -> None:
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable (outputs, batch) -> scalar, got {loss_fn!r}")
    for name, value in (("sequential", sequential), ("progress", progress)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options must be a dict of solver options, got {options!r}")


def _finetune_config(finetune) -> Finetune | None:
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


def _dict_targets(model, executed, sparsity, targets, ignore) -> list[Target]:
    unknown = [name for name in sparsity if name not in executed]
    if unknown:
        raise ValueError(
            f"sparsity names {unknown}, which are not prunable layers that run in the model "
            f"(those are {executed[:8]}{'...' if len(executed) > 8 else ''})"
        )
    patterns = targets if targets is not None else [re.escape(name) for name in sparsity]
    chosen = select_targets(model, executed, patterns, ignore)
    missing = [t.name for t in chosen if t.name not in sparsity]
    extra = sorted(set(sparsity) - {t.name for t in chosen})
    if missing or extra:
        raise ValueError(
            f"sparsity must have one entry per target: missing {missing}, not targets {extra}"
        )
    return chosen


def _check_fits(targets: Sequence[Target], family: Budget) -> None:
    for t in targets:
        try:
            allocation.layer_family(t, family).max_count(t.shape)
            if family.sized:
                allocation.layer_family(t, family).check(t.shape)
        except ValueError as err:
            raise ValueError(
                f"budget {family!r} does not fit layer {t.name!r} (weight "
                f"{'x'.join(map(str, t.weight_shape))}, problem {t.shape[0]}x{t.shape[1]}): {err}"
            ) from None
