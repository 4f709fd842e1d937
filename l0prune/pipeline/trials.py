"""A prune run's trials: pruning the dense model at budgets, finetuning, evaluating, and the
loss-tolerance search over them.

:class:`Trials` drives a :class:`~l0prune.pipeline.interface.Pipeline`. With a fixed budget it
prunes once (:meth:`Trials.fixed`); with ``alpha`` it runs the search of
:mod:`l0prune.pipeline.search` (:meth:`Trials.search`): every trial starts from the dense model
(the run's snapshot), is finetuned if asked and validated, the sparsest trial within
``alpha L(W)`` is kept (its state copied to the CPU) and put back at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from solvers import Budget, kept_at

from ..config import PruneConfig
from ..data.batches import LossFn, mean_loss
from ..model.input_check import explained
from ..model.masks import attach
from ..model.snapshot import Snapshot
from ..model.targets import Target
from ..report import LayerReport, PruneReport, Trial
from . import allocation
from .finetune import Finetune, masked_finetune
from .interface import LayerResult, Pipeline
from .progress import progress
from .search import GRID, MAX_SPARSITY, RESOLUTION, scan, two_stage

__all__ = ["Trials"]


@dataclass
class _Outcome:
    """A pruned state: the layer results and losses, and (for the search) the state itself and
    what the pipeline needs to give its error curves."""

    sparsity: float
    results: dict[str, LayerResult]
    loss: float | None
    loss_before_finetune: float | None
    budgets: Mapping[str, Budget]
    state: dict[str, torch.Tensor] | None = None
    basis: object = None


class Trials:
    """One run's pruning, finetuning, evaluation and bookkeeping (see the module docstring).

    Args:
        model: the model.
        pipeline: prunes its targets at budgets.
        snapshot: the dense model, put back before every trial.
        validation: held-out batches, or ``None``.
        loss_fn: ``loss_fn(outputs, batch) -> scalar``.
        finetune: masked finetuning after each trial, or ``None``.
        calibration: finetuning's default data.
        device: where the losses and finetuning run (where the model is).
        seed: finetuning's seed.
        progress: a progress bar over the search's trials.
    """

    def __init__(self, model: nn.Module, pipeline: Pipeline, snapshot: Snapshot, *,
                 validation: Iterable | None, loss_fn: LossFn, finetune: Finetune | None,
                 calibration: Iterable, device: torch.device, seed: int, progress: bool):
        self.model, self.pipeline, self.snapshot = model, pipeline, snapshot
        self.validation, self.loss_fn, self.finetune = validation, loss_fn, finetune
        self.calibration, self.device, self.seed = calibration, device, seed
        self.progress = progress
        self.validation_passes = self.finetune_steps = 0
        self.trials: list[Trial] = []
        self.dense_loss: float | None = None
        self.limit = math.inf
        self.outcome: _Outcome | None = None  # the best so far
        self.current: _Outcome | None = None  # the one in the model
        self.bar = None

    def evaluate(self) -> float:
        self.validation_passes += 1
        return mean_loss(self.model, self.validation, self.loss_fn, self.device)

    def apply(self, budgets: Mapping[str, Budget]) -> _Outcome:
        """Prune the (dense) model under ``budgets``, finetune, evaluate."""
        results = self.pipeline.run(budgets)
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
        return _Outcome(1.0 - kept / total, results, loss, before, dict(budgets))

    def dense_evaluate(self) -> float:
        """The dense model's loss: the first pass over the validation data, so a batch that
        does not fit the model is named there."""
        with explained(self.model, "validation"):
            return self.evaluate()

    def fixed(self, budgets: Mapping[str, Budget]) -> None:
        """Prune once at ``budgets`` (the losses measured when there is validation data)."""
        if self.validation is not None:
            self.dense_loss = self.dense_evaluate()
        self.outcome = self.apply(budgets)

    def search(self, alpha: float, family: Budget) -> None:
        """The search of :mod:`l0prune.pipeline.search`; leaves the best trial in the model."""
        self.dense_loss = self.dense_evaluate()
        if self.dense_loss <= 0:
            raise ValueError(
                f"alpha needs a positive dense validation loss, got {self.dense_loss:.6g}"
            )
        self.limit = alpha * self.dense_loss
        targets = self.pipeline.targets
        total = sum(t.total for t in targets)

        def uniform(s: float, phase: str) -> bool:
            return self._trial(allocation.uniform(targets, family, s), _stage("uniform", phase), s)

        def allocated(best_uniform: float):
            if self.outcome is None:
                return None
            curves = self.pipeline.curves(family, GRID, self.outcome.basis)
            if self.pipeline.curves_reset_model:
                self.current = None
            return lambda s, phase: self._trial(
                allocation.spread(curves, kept_at(total, s)), _stage("allocated", phase), s,
            )

        with progress("alpha search", "trial", enabled=self.progress) as self.bar:
            two_stage(uniform, allocated)
            self._prune_dense_layers(family)
            if self.outcome is None:  # nothing passed: the dense model, as pruned at 0 %
                self._trial(allocation.uniform(targets, family, 0.0), "uniform", 0.0)
                self.outcome = self.current
            elif self.current is not self.outcome:
                self._put_back(self.outcome)

    def _prune_dense_layers(self, family: Budget) -> None:
        """Stage 3 of the search: each target the best trial leaves dense is pruned a little on
        top of it, then further while the model stays within the tolerance (an upward
        :func:`~l0prune.pipeline.search.scan` over that layer's sparsity alone)."""
        if self.outcome is None:
            return
        dense = [t for t in self.pipeline.targets
                 if self.outcome.results[t.name].kept == self.outcome.results[t.name].total]
        for target in dense:
            def passes(s: float, target: Target = target) -> bool:
                budgets = dict(self.outcome.budgets)
                budgets[target.name] = allocation.sized(target, family, s)
                return self._trial(budgets, "layer", s)

            scan(passes, 0.0, MAX_SPARSITY, RESOLUTION)

    def _trial(self, budgets: Mapping[str, Budget], stage: str, target: float) -> bool:
        """Prune the dense model under ``budgets``; keep the state if it is the best so far."""
        self.snapshot.restore(devices=False)
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
            outcome.basis = self.pipeline.curve_basis()
            self.outcome = outcome
        self.bar.set_postfix(stage=stage, sparsity=f"{outcome.sparsity:.3f}",
                             ratio=f"{outcome.loss / self.dense_loss:.4f}")
        self.bar.update()
        return met

    def _put_back(self, outcome: _Outcome) -> None:
        """Make the model hold ``outcome``'s state again."""
        self.snapshot.restore(devices=False)
        self.model.eval()
        self.model.load_state_dict(outcome.state)
        for t in self.pipeline.targets:
            attach(t.module, t.module.weight, outcome.results[t.name].mask)
        outcome.loss = self.evaluate()

    def report(self, config: PruneConfig) -> PruneReport:
        """The report of the kept outcome (the best trial, or the one fixed run); the run's
        session adds its time and threads."""
        outcome = self.outcome
        shapes = {t.name: list(t.out_in_shape) for t in self.pipeline.targets}
        layers = [
            LayerReport(r.name, shapes[r.name], r.kept, r.total, r.relative_error, r.seconds)
            for r in outcome.results.values()
        ]
        return PruneReport(
            layers=layers, method=config.method, budget=config.budget.text,
            sequential=config.sequential, dense_loss=self.dense_loss, pruned_loss=outcome.loss,
            loss_before_finetune=outcome.loss_before_finetune, alpha=config.alpha,
            calibration_passes=self.pipeline.passes, validation_passes=self.validation_passes,
            finetune_steps=self.finetune_steps, trials=self.trials,
        )


def _stage(stage: str, phase: str) -> str:
    """A trial's stage as reported: ``"uniform"``, ``"uniform scan"``, ``"allocated"``, ..."""
    return stage if phase == "bisection" else f"{stage} {phase}"
