"""Gradual pruning: prune a little, finetune, prune more (Zhu & Gupta 2017).

From the model's current (trained) weights, step ``t = 1, ..., T`` prunes every target to the
scheduled sparsity ``s_t = s_f + (s_0 - s_f)(1 - t/T)^3`` (:mod:`l0prune.pipeline.schedules`) and
then finetunes with the masks fixed (:func:`~l0prune.pipeline.finetune.masked_finetune`). Each step
is a layerwise solve (:class:`~l0prune.pipeline.layerwise.LayerPruner`) *from the current sparse
weights*: the layer problem's ``W`` is the finetuned weight of the step before, ``H`` the statistics
of the current model, and the budget keeps the support inside the current one
(:func:`~l0prune.pipeline.restricted.within`), so a pruned weight stays pruned and the pruned set
only grows. With ``sequential=True`` each
layer is fitted to reproduce the output of the model as it was at the start of the step.

With ``alpha`` every step is checked against ``L(W') <= alpha L(W)`` on the validation data
(``L(W)`` the loss of the model given). Past the planned final sparsity the run continues, each
step keeping ``SCAN_FACTOR`` of the weights of the one before, while the loss stays within
``alpha``. At the first step over it, the run bisects (in the log of the weights kept,
``RETRIES`` tries) between the last passing model and that failure, each try a step from the
best passing model; it returns the sparsest passing model (the model as given when none
passes).

Any exception (``KeyboardInterrupt`` included) puts the model back exactly as it was
(:class:`~l0prune.model.snapshot.Snapshot`).

References:
    Zhu, Gupta. "To prune, or not to prune: exploring the efficacy of pruning for model
    compression." ICLR workshop 2018.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sized

import torch
from torch import nn

from l0prune import validate
from l0prune.config import PruneConfig
from l0prune.data.batches import LossFn, cross_entropy, mean_loss
from l0prune.data.hf_datasets import batches_of
from l0prune.data.regroup import regrouped
from l0prune.model.input_check import explained
from l0prune.model.masks import mask_of
from l0prune.model.snapshot import Snapshot
from l0prune.model.targets import Target
from l0prune.report import LayerReport, PruneReport, Trial
from solvers import NM, Budget, method_info

from . import allocation
from .finetune import masked_finetune
from .footprint import check_memory
from .layerwise import LayerPruner
from .progress import progress as progress_bar
from .restricted import within
from .schedules import SCHEDULES, scheduled_sparsity
from .search import MAX_SPARSITY, SCAN_FACTOR
from .session import RunSession
from .workflow import Kept, check_workflow, configured, sparsity_of, targets_of

__all__ = ["RETRIES", "gradual"]

#: Smaller steps tried from the last passing model after a step goes over ``alpha``.
RETRIES = 2
#: Methods whose supports come from the budget's ``select``, so they honour a restricted budget.
_RESTRICTABLE = ("magnitude", "wanda", "obs", "iht", "admm", "hard_concrete")


def gradual(
    model: nn.Module,
    train: Iterable,
    config: PruneConfig | None = None,
    *,
    validation: Iterable | None = None,
    loss_fn: LossFn | None = None,
    steps: int = 10,
    schedule: str = "cubic",
    initial_sparsity: float = 0.0,
    **settings,
) -> PruneReport:
    """Prune ``model`` in place in ``steps`` steps of a sparsity schedule, finetuning between.

    Args:
        model: a trained torch model, not pruned yet (changed in place).
        train: re-iterable batches: each step's layer statistics, and finetuning unless
            ``finetune.data`` is given.
        config: the settings (:class:`~l0prune.PruneConfig`) shared with :func:`l0prune.prune`:
            ``sparsity`` is the planned final sparsity ``s_f`` of every target (default with
            ``alpha``: :data:`~l0prune.pipeline.search.MAX_SPARSITY`); ``alpha`` continues
            past ``s_f`` while ``L <= alpha L(dense)`` and returns the sparsest passing step
            (see the module docstring); ``method`` solves each step (not ``"exact"``);
            ``finetune`` runs after every step (``None``: iterative layerwise pruning);
            ``budget`` is ``"unstructured"``, ``"per-row"`` or ``"structured"``, unsized;
            ``targets``, ``ignore``, ``sequential``, ``seed``, ``device``, ``options``,
            ``progress`` (over the steps) and ``threads`` as for :func:`l0prune.prune`.
        validation: held-out batches; the loss of every step is measured on them (required).
        loss_fn: ``loss_fn(outputs, batch) -> scalar`` (default: cross-entropy).
        steps: ``T``, the steps of the schedule.
        schedule: ``"cubic"`` (Zhu & Gupta; tfmot's ``PolynomialDecay``) or ``"linear"``.
        initial_sparsity: ``s_0``, where the schedule starts (the model itself is dense).
        **settings: fields of :class:`~l0prune.PruneConfig` in place of ``config``'s.

    Returns:
        A :class:`~l0prune.report.PruneReport`: the returned model's layers (each with the
        relative error of the step that made it, against the model before that step), its
        losses, and every step as a trial (stage ``"gradual"``, ``"gradual continued"`` past
        the plan, ``"gradual retry"`` for a smaller step after a failure).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import l0prune
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> data = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
        >>> report = l0prune.gradual(model, data, sparsity=0.75, validation=data, steps=3,
        ...                          method="magnitude", finetune={"steps": 2}, progress=False)
        >>> [round(t.sparsity, 3) for t in report.trials]
        [0.531, 0.719, 0.75]
    """
    config = configured(config, settings, "gradual")
    train, validation = batches_of(train), batches_of(validation)
    check_workflow(model, train, validation, loss_fn, config, "gradual", needs_validation=True)
    _check_settings(steps, schedule, initial_sparsity, config)
    final = config.sparsity if config.sparsity is not None else MAX_SPARSITY
    with RunSession(model, config, (train, validation)) as session:
        chosen, discovery = targets_of(model, train, config, session.device)
        for t in chosen:
            allocation.layer_family(t, config.budget).max_count(t.shape)
        check_memory(chosen, discovery,
                     statistics=method_info(config.method).statistics_for(config.options),
                     method=config.method, sequential=config.sequential, fixed=config.fixed,
                     family=config.budget, h_block=config.h_block, device=session.device,
                     batches=len(train) if isinstance(train, Sized) else 1)
        run = _Gradual(model, train, chosen, discovery, session.snapshot, config,
                       loss_fn=loss_fn or cross_entropy, validation=validation,
                       device=session.device)
        plan = [scheduled_sparsity(t, steps, initial_sparsity, final, schedule)
                for t in range(1, steps + 1)]
        run.go(plan, config.alpha)
        report = session.finish(run.report())
        report.perplexity = getattr(loss_fn, "perplexity", False) is True
    return report


def _check_settings(steps, schedule, initial, config: PruneConfig) -> None:
    validate.integer(steps, "steps", 1)
    validate.choice(schedule, "schedule", sorted(SCHEDULES))
    validate.fraction(initial, "initial_sparsity")
    if isinstance(config.sparsity, Mapping):
        raise ValueError("gradual takes one sparsity for every target, not a dict by layer")
    if config.sparsity is not None and initial > config.sparsity:
        raise ValueError(f"initial_sparsity must be at most sparsity, got {initial!r} > "
                         f"{config.sparsity!r}")
    if config.method not in _RESTRICTABLE:
        raise ValueError(
            f"method {config.method!r} cannot keep pruned weights pruned; gradual takes one of "
            f"{list(_RESTRICTABLE)}"
        )
    if config.budget.sized or isinstance(config.budget, NM):
        raise ValueError(
            "budget must be an unsized unstructured, per-row or structured budget (the schedule "
            f"sizes it at every step), got {config.budget.text!r}"
        )


class _Gradual:
    """One gradual run's steps, bookkeeping and best passing model."""

    def __init__(self, model, train, targets, discovery, snapshot, config: PruneConfig, *,
                 loss_fn, validation, device):
        self.model, self.train, self.targets = model, train, list(targets)
        self.statistics_data = regrouped(train)  # the steps' statistics; finetuning: train
        self.discovery, self.snapshot, self.config = discovery, snapshot, config
        self.family, self.method, self.finetune = config.budget, config.method, config.finetune
        self.loss_fn, self.validation = loss_fn, validation
        self.device, self.seed, self.progress = device, config.seed, config.progress
        self.trials: list[Trial] = []
        self.calibration_passes = self.validation_passes = self.finetune_steps = 0
        self.limit = math.inf
        self.dense_loss = 0.0
        self.best: Kept | None = None  # the sparsest passing model so far
        self.last: Kept | None = None  # the model the last step left

    def evaluate(self) -> float:
        self.validation_passes += 1
        return mean_loss(self.model, self.validation, self.loss_fn, self.device)

    def go(self, plan: list[float], alpha: float | None) -> None:
        """Run the planned steps; with ``alpha``, continue, retry and keep the best."""
        with explained(self.model, "validation"):
            self.dense_loss = self.evaluate()
        if alpha is not None:
            if self.dense_loss <= 0:
                raise ValueError(
                    f"alpha needs a positive dense validation loss, got {self.dense_loss:.6g}"
                )
            self.limit = alpha * self.dense_loss
        with progress_bar("gradual pruning", "step", enabled=self.progress) as self.bar:
            failed = None
            for target in plan:
                if not self.step(target, "gradual") and alpha is not None:
                    failed = target
                    break
            if alpha is None:
                return
            while failed is None:
                target = 1.0 - SCAN_FACTOR * (1.0 - self.best.sparsity)
                if target >= MAX_SPARSITY:
                    break
                if not self.step(target, "gradual continued"):
                    failed = target
            if failed is not None:
                self.retry(failed)
            self.put_back_best()

    def retry(self, failed: float) -> None:
        """Bisection in the log of the weights kept between the best passing model and the
        sparsest failure, each try a step from the best passing model (:data:`RETRIES` tries)."""
        for _ in range(RETRIES):
            base = self.best.sparsity if self.best is not None else 0.0
            target = 1.0 - math.sqrt((1.0 - base) * (1.0 - failed))
            self.put_back_best()
            if not self.step(target, "gradual retry"):
                failed = target

    def put_back_best(self) -> None:
        """Leave the best passing model in ``model`` (the dense one when none passed)."""
        if self.best is self.last:
            return
        self.snapshot.restore(devices=False)
        self.model.eval()
        if self.best is not None:
            self.best.put_back(self.model)
        self.last = self.best

    def step(self, target: float, stage: str) -> bool:
        """Prune every target to ``target`` from the current weights, finetune, evaluate."""
        allowed = self._masks()
        pruner = LayerPruner(self.model, self.statistics_data, self.targets, self.discovery,
                             Snapshot(self.model), self.config, device=self.device)
        results = pruner.run({t.name: self._budget(t, target, allowed[t.name])
                              for t in self.targets})
        self.calibration_passes += pruner.passes
        for t in self.targets:
            mask = t.matrix(results[t.name].mask)[0]
            if allowed[t.name] is not None and bool((mask & ~allowed[t.name]).any()):
                raise RuntimeError(f"method {self.method!r} revived pruned weights of layer "
                                   f"{t.name!r}: a bug in its support selection")
        before = None
        if self.finetune is not None:
            done = masked_finetune(self.model, self.finetune, self.loss_fn, self.device,
                                   data=self.train, validate=self.evaluate, seed=self.seed)
            self.finetune_steps += done.steps
            before, loss = done.loss_before, done.loss
        else:
            loss = self.evaluate()
        sparsity = sparsity_of(self.targets)
        met = loss <= self.limit
        self.trials.append(Trial(stage, target, sparsity, loss, before, met))
        layers = {name: (r.kept, r.relative_error, r.seconds) for name, r in results.items()}
        self.last = Kept.of(self.model, copy=self.limit < math.inf, sparsity=sparsity,
                            loss=loss, loss_before_finetune=before, layers=layers)
        if met and (self.best is None or sparsity >= self.best.sparsity):
            self.best = self.last
        self.bar.set_postfix(stage=stage, sparsity=f"{sparsity:.3f}",
                             ratio=f"{loss / self.dense_loss:.4f}")
        self.bar.update()
        return met

    def _masks(self) -> dict[str, torch.Tensor | None]:
        """Each target's current mask as a matrix (``None`` if dense): the support a step
        may keep. Its weights, zeros in place, are the step's dense weights."""
        allowed = {}
        for t in self.targets:
            mask = mask_of(t.module)
            allowed[t.name] = None if mask is None else t.matrix(mask)[0]
        return allowed

    def _budget(self, target: Target, sparsity: float, allowed: torch.Tensor | None) -> Budget:
        budget = allocation.sized(target, self.family, sparsity)
        return budget if allowed is None else within(budget, allowed)

    def report(self) -> PruneReport:
        """The report of the model left (the sparsest passing step with ``alpha``, else the
        last); the run's session adds its time and threads."""
        config = self.config
        kept = self.best if config.alpha is not None else self.last
        if kept is None:  # nothing passed: the model as given
            layers = [LayerReport(t.name, list(t.out_in_shape), t.total, t.total, 0.0, 0.0)
                      for t in self.targets]
            loss, before = self.dense_loss, None
        else:
            layers = [LayerReport(t.name, list(t.out_in_shape), kept.layers[t.name][0], t.total,
                                  kept.layers[t.name][1], kept.layers[t.name][2])
                      for t in self.targets]
            loss, before = kept.loss, kept.loss_before_finetune
        return PruneReport(
            layers=layers, method=config.method, budget=config.budget.text,
            sequential=config.sequential, dense_loss=self.dense_loss, pruned_loss=loss,
            loss_before_finetune=before, alpha=config.alpha,
            calibration_passes=self.calibration_passes, validation_passes=self.validation_passes,
            finetune_steps=self.finetune_steps, trials=self.trials,
        )
