"""Pruning a model's target layers at given budgets, from streamed statistics.

Each target becomes a :class:`~solvers.LayerProblem` per convolution group and
:func:`solvers.solve` does all the math. With ``W`` the dense weight (from the run's
:class:`~l0prune.model.snapshot.Snapshot`), ``X_0`` the layer's inputs in the dense model and ``X``
those it sees:

- a method that reads no statistics (magnitude) takes none: no pass over the data, and each
  problem is the plain one (``H = I``); one that reads only ``diag H`` (Wanda) takes that alone
  (:func:`~l0prune.model.statistics.collect` with ``diagonal``), unpaired: with
  ``sequential=True`` from the model as pruned so far, otherwise from the dense model. What a
  method reads comes from the solver registry (:func:`solvers.method_info`). The rest of this
  docstring is about full statistics.
- ``sequential=False``: every layer's statistics come from the dense model (``X = X_0``), in
  one pass over the calibration data reused by every later run; the problem is ``(W, H)`` with
  ``H = X^T X / N``, and the layers are independent.
- ``sequential=True``: input groups are handled in the order they run; each group's statistics
  are taken with every earlier group already pruned (one pass per group), and its problem is to
  reproduce the *dense model's* output from the inputs it now sees:
  ``min ||X W'^T - X_0 W^T||^2 / N + lam ||W' - W||^2``. With ``H = X^T X / N``,
  ``G = (X_0 W^T)^T X / N`` (``= W C^T`` for ``C = X^T X_0 / N``) and ``A = H + lam I`` this is
  the layer problem ``tr((W' - W~) A (W' - W~)^T)`` (plus a constant) for the target
  ``W~ = (G + lam W) A^-1``, so a layer corrects the error of the layers before it
  (``W~ = W`` when ``X = X_0``; :meth:`solvers.LayerProblem.from_moments` builds it). The
  first group only ever sees the dense model, so its statistics are taken once.

The relative error reported per layer is ``||X W'^T - X_0 W^T||^2 / ||X_0 W^T||^2``: how far the
layer's output is from the dense model's (in parallel mode, the layer problem's relative error).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from l0prune.config import PruneConfig
from l0prune.model.masks import attach
from l0prune.model.snapshot import Snapshot
from l0prune.model.statistics import Discovery, Moments, collect, input_groups
from l0prune.model.targets import Target
from solvers import Budget, LayerProblem, kept_at

from .allocation import Curve, layer_family, least_count
from .executors import LayerSolves, LayerTask
from .footprint import column_plan
from .interface import LayerResult
from .progress import progress
from .solves import TargetSolution, target_problems

__all__ = ["LayerPruner"]


class LayerPruner:
    """Prunes the target layers of one model at given budgets: the whole-model
    :class:`~l0prune.pipeline.interface.Pipeline`.

    Args:
        model: the model; its targets must be dense when :meth:`run` starts.
        calibration: re-iterable calibration batches.
        targets: the layers to prune.
        discovery: the model's :class:`~l0prune.model.statistics.Discovery`.
        snapshot: holds the dense weights.
        config: the run's configuration (its method, options and seed, ``sequential``,
            ``progress``: a progress bar over layers).
        device: where statistics and solves run.
        solves: where the solves run (:class:`~l0prune.pipeline.executors.LayerSolves`; default:
            here).

    Attributes:
        passes: passes over the calibration data so far.
        statistics: :class:`~l0prune.model.statistics.Moments` per target from the last run.
        curves_reset_model: ``False``: :meth:`curves` leaves the model as it is.
        model_device: ``device``: the model runs there.
        blocks: ``None``.

    Example:
        >>> from torch import nn
        >>> from solvers import Unstructured
        >>> from l0prune.pipeline.allocation import uniform
        >>> from l0prune.model.snapshot import Snapshot
        >>> from l0prune.model.statistics import discover
        >>> from l0prune.model.targets import select_targets
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
        >>> data = [torch.randn(64, 8)]
        >>> discovery = discover(model, data[0], torch.device("cpu"))
        >>> targets = select_targets(model, discovery.order)
        >>> config = PruneConfig(sparsity=0.75, method="wanda", progress=False)
        >>> pruner = LayerPruner(model, data, targets, discovery, Snapshot(model), config,
        ...                      device=torch.device("cpu"))
        >>> pruner.run(uniform(targets, Unstructured(), 0.75))["0"].kept
        32
    """

    curves_reset_model = False
    blocks = None

    def __init__(
        self,
        model: nn.Module,
        calibration: Iterable,
        targets: Sequence[Target],
        discovery: Discovery,
        snapshot: Snapshot,
        config: PruneConfig,
        *,
        device: torch.device,
        solves: LayerSolves | None = None,
    ):
        self.model, self.calibration, self.targets = model, calibration, list(targets)
        self.discovery, self.snapshot, self.config = discovery, snapshot, config
        self.solves = solves if solves is not None else LayerSolves()
        self.options = config.solver_options
        self.sequential, self.device = config.sequential, device
        self.kind = self.solves.statistics(config.method, self.options)
        self.column_blocks = column_plan(self.targets, config.budget, config.h_block, self.kind)
        self.model_device = device
        self.groups = input_groups(self.targets, discovery)
        self.weights = {t.name: t.module.weight for t in self.targets}
        self.passes = 0
        self.statistics: dict[str, Moments] = {}
        self._first: dict[str, Moments] = {}
        self._cache: dict[str, tuple[weakref.ref, list[list[LayerProblem]]]] = {}

    def _collect(self, groups, reference=None) -> dict[str, Moments]:
        self.passes += 1
        diagonal = self.kind == "diagonal"
        return collect(self.model, self.calibration, groups, self.device, self.discovery,
                       None if diagonal else reference, diagonal=diagonal,
                       blocks=self.column_blocks)

    @contextmanager
    def _dense(self, results: Mapping[str, LayerResult]) -> Iterator[None]:
        """Put the dense weights back into the layers pruned so far, for the duration."""
        modules = {t.name: t.module for t in self.targets}
        with torch.no_grad():
            for name in results:
                modules[name].weight.copy_(self.snapshot.value(self.weights[name]))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, result in results.items():
                    modules[name].weight.copy_(result.weight)

    def _problems(self, target: Target, moments: Moments) -> list[list[LayerProblem]]:
        """``target``'s problems (per convolution group, one per column block) for
        ``moments``, built once.

        A problem caches its scaled form and eigendecomposition (and, from paired statistics,
        its sequential target solve), so every budget tried on the same statistics (an
        allocation's error curve, a search's trials) reuses them. One entry per target: new
        statistics replace it, and it goes as soon as its statistics are freed (block by
        block, once its group is solved), so no stale problem holds memory; a run at a fixed
        budget drops it once the layer is solved.
        """
        cached = self._cache.get(target.name)
        if cached is not None and cached[0]() is moments:
            return cached[1]
        self._cache.pop(target.name, None)  # before the new problems are built
        W = self._dense_matrix(target)
        problems = target_problems(W, moments.H, moments.dense_cross(W), moments.energy,
                                   check_psd=False)  # H = X^T X (or its diagonal), summed here
        freed = partial(_forget, self._cache, target.name)
        self._cache[target.name] = (weakref.ref(moments, freed), problems)
        return problems

    def solve(self, target: Target, budget: Budget, moments: Moments) -> LayerResult:
        """Solve ``target``'s problem (each convolution group apart) under ``budget``.

        Args:
            target: the layer.
            budget: a sized budget for one of its problems.
            moments: its statistics (paired ones give the sequential problem).

        Returns:
            The :class:`LayerResult`; the model is not changed.
        """
        return self.solve_all([(target, budget, moments)])[0]

    def _dense_matrix(self, target: Target) -> torch.Tensor:
        """``target``'s dense weight as ``(groups, out, in)`` on the run's device, contiguous
        (the layout a worker receives, so the same sums here and there)."""
        weight = self.snapshot.value(self.weights[target.name])
        return target.matrix(weight).to(self.device).contiguous()

    def _task(self, target: Target, budgets: list[Budget], moments: Moments,
              errors_only: bool = False) -> LayerTask:
        return LayerTask(target.name, self._dense_matrix(target), moments, budgets,
                         self.config.method, self.options, errors_only,
                         partial(self._problems, target, moments))

    def solve_all(self, jobs: Sequence[tuple[Target, Budget, Moments]],
                  on_done: Callable[[int], None] | None = None) -> list[LayerResult]:
        """Solve independent ``(target, budget, moments)`` jobs together (on the run's
        executor, see :mod:`l0prune.pipeline.executors`).

        Args:
            jobs: the jobs.
            on_done: called with a job's index as each one finishes.

        Returns:
            Their :class:`LayerResult` s, in order; the model is not changed.
        """
        return self.submit_all(jobs)(on_done)

    def submit_all(self, jobs: Sequence[tuple[Target, Budget, Moments]]
                   ) -> Callable[[Callable[[int], None] | None], list[LayerResult]]:
        """:meth:`solve_all` without the wait: the jobs go to the run's executor now; the
        function returned gives their :class:`LayerResult` s (the model is not changed)."""
        tasks = [self._task(t, [budget], moments) for t, budget, moments in jobs]
        pending = self.solves.submit(tasks)

        def results(on_done=None) -> list[LayerResult]:
            solutions = pending(on_done)
            return [_result(t, s[0]) for (t, _, _), s in zip(jobs, solutions, strict=True)]

        return results

    def run(self, budgets: Mapping[str, Budget]) -> dict[str, LayerResult]:
        """Prune every target under its budget and attach the masks.

        Args:
            budgets: a sized budget per target name (for one problem of the layer).

        Returns:
            A :class:`LayerResult` per target name, in the order the layers run; each
            ``weight`` is the layer's own (not a copy).
        """
        results: dict[str, LayerResult] = {}
        sequential = self.sequential and self.kind != "none"
        plan = [[group] for group in self.groups] if sequential else [self.groups]
        if self.kind == "none":
            self.statistics = {t.name: Moments(None) for t in self.targets}
        elif not sequential and not self.statistics:
            self.statistics = self._collect(self.groups)
        with progress("layers", "layer", total=len(self.targets),
                      enabled=self.config.progress, transient=True) as bar:
            for index, level in enumerate(plan):
                if sequential and index == 0:
                    self._first = self._first or self._collect(level)
                    self.statistics.update(self._first)
                elif sequential:
                    self.statistics.update(
                        self._collect(level, reference=lambda: self._dense(results))
                    )
                members = [t for group in level for t in group]
                solved = self.solve_all(
                    [(t, budgets[t.name], self.statistics[t.name]) for t in members],
                    on_done=lambda i: bar.update(),
                )
                for target, result in zip(members, solved, strict=True):
                    with torch.no_grad():
                        target.module.weight.copy_(result.weight)
                    results[target.name] = result
                    if self.config.fixed:  # solved once: its factorisations are done with
                        self._cache.pop(target.name, None)
        for target in self.targets:
            result = results[target.name]
            attach(target.module, result.weight, result.mask)
            results[target.name] = dataclasses.replace(result, weight=target.module.weight)
        return results

    def curve_basis(self) -> dict[str, Moments]:
        """The statistics of the run just done (what :meth:`curves` solves on)."""
        return dict(self.statistics)

    def curves(self, family: Budget, grid: Sequence[float],
               basis: Mapping[str, Moments]) -> list[Curve]:
        """Each target's error curve at the sparsities in ``grid``, on the statistics of
        ``basis`` (from :meth:`curve_basis`).

        Args:
            family: the run's budget family.
            grid: sparsities in [0, 1).
            basis: the statistics per target.

        Returns:
            One :class:`~l0prune.pipeline.allocation.Curve` per target.
        """
        self.statistics = dict(basis)
        with progress("error curves", "layer", total=len(self.targets),
                      enabled=self.config.progress, transient=True) as bar:
            return self.curve_all([(t, self.statistics[t.name]) for t in self.targets], family,
                                  grid, on_done=lambda i: bar.update())

    def curve(self, target: Target, family: Budget, grid: Sequence[float],
              moments: Moments) -> Curve:
        """``target``'s error curve at the sparsities in ``grid``, on ``moments``.

        Args:
            target: the layer.
            family: the run's budget family.
            grid: sparsities in [0, 1).
            moments: its statistics.

        Returns:
            The :class:`~l0prune.pipeline.allocation.Curve` (the dense count first, error 0).
        """
        return self.curve_all([(target, moments)], family, grid)[0]

    def curve_all(self, layers: Sequence[tuple[Target, Moments]], family: Budget,
                  grid: Sequence[float],
                  on_done: Callable[[int], None] | None = None) -> list[Curve]:
        """The error curves of ``(target, moments)`` pairs together: one task per target
        solving every sparsity of its curve on one set of problems, errors only.

        Args:
            layers: the targets and their statistics.
            family: the run's budget family.
            grid: sparsities in [0, 1).
            on_done: called with a pair's index as each curve is done.

        Returns:
            One :class:`~l0prune.pipeline.allocation.Curve` per pair.
        """
        families, counts, tasks = [], [], []
        for target, moments in layers:
            fam = layer_family(target, family)
            top = fam.max_count(target.shape)
            least = least_count(fam)
            found = sorted({max(kept_at(top, s), least) for s in grid} | {top}, reverse=True)
            families.append(fam)
            counts.append(found)
            tasks.append(self._task(target, [fam.with_count(c) for c in found[1:]], moments,
                                    errors_only=True))
        solved = self.solves(tasks, on_done)
        return [
            Curve(target, fam, found, [0.0] + [s.relative_error for s in solutions])
            for (target, _), fam, found, solutions in zip(layers, families, counts, solved,
                                                         strict=True)
        ]


def _forget(cache: dict, name: str, ref: weakref.ref) -> None:
    """Drop ``cache[name]`` if it still holds the problems of the statistics behind ``ref``."""
    if name in cache and cache[name][0] is ref:
        del cache[name]


def _result(target: Target, solution: TargetSolution) -> LayerResult:
    return LayerResult.of(target.name, solution.relative_error, solution.seconds,
                          target.unmatrix(solution.weight), target.unmatrix(solution.mask))
