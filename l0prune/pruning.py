"""``l0prune.prune``: prune a trained torch model to a sparsity or within a loss tolerance.

The run, in order (DESIGN.md 2.6 and 3):

1. check the arguments; capture the model (:class:`~l0prune.model.snapshot.Snapshot`);
2. one forward pass on a calibration batch finds the prunable layers, the order they run in and
   which of them read the same input (:func:`~l0prune.model.statistics.discover`); the targets are
   chosen from them (:func:`~l0prune.model.targets.select_targets`);
3. with ``sparsity`` (or a sized budget): every target is pruned once
   (:class:`~l0prune.pipeline.layerwise.LayerPruner`), then finetuned if asked;
   with ``alpha``: the search of :mod:`l0prune.pipeline.search`, each trial starting from the dense
   model and finetuned if asked; the sparsest trial within ``alpha`` is put back at the end;
4. the report.

Any exception (a bad batch, a solver error, ``KeyboardInterrupt``) puts the model back exactly as
it was before the exception propagates, on the device it was on. The price is memory: the
snapshot holds a copy of the model's parameters and buffers for the whole run, taken before the
model moves to ``device`` (so on the model's own device, the CPU for a model moved to a GPU);
the search keeps its best trial's state on the CPU.

A model built as a stack of repeated blocks (a transformer) is pruned block by block by default
(:mod:`l0prune.pipeline.blockwise`): one pass over the calibration data, one block at a time on the
device, the rollback copies taken per block where the model is
(:class:`~l0prune.model.rollback.Rollback`) just before each block changes, and (with
``checkpoint=``) each finished block written to disk so that a run resumes
(:mod:`l0prune.pipeline.resume`).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from solvers import NM, Budget, Unstructured, methods

from .data.batches import LossFn, check_data, cross_entropy, mean_loss, unchanged_generators
from .model import blocks
from .model.input_check import explained
from .model.masks import attach, refresh
from .model.rollback import Rollback
from .model.snapshot import Snapshot, move
from .model.statistics import Moments, discover
from .model.targets import Target, select_targets
from .pipeline import allocation
from .pipeline.blockwise import BlockPruner, outside_problem
from .pipeline.executors import layer_solves
from .pipeline.finetune import Finetune, masked_finetune
from .pipeline.layerwise import LayerPruner, LayerResult, method_options
from .pipeline.progress import progress
from .pipeline.resume import Checkpoint
from .pipeline.search import GRID, MAX_SPARSITY, RESOLUTION, scan, two_stage
from .pipeline.threads import using_threads
from .pipeline.workflow import budget_text, finetune_config, fraction, run_device
from .report import LayerReport, PruneReport, Trial

__all__ = ["IncompatibleBudget", "prune"]


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
    skip_incompatible: bool = False,
    blockwise: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    rollback_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    executor=None,
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
            output or cross-entropy against the batch's last item / ``labels``. For a causal
            LM on :func:`~l0prune.data.text.text_batches`,
            :func:`~l0prune.data.perplexity.next_token_nll` (a loss with ``perplexity = True`` makes
            the report give perplexities).
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
            :mod:`l0prune.pipeline.layerwise`); ``False``: every layer's statistics from the
            dense model, in one pass.
        finetune: a :class:`~l0prune.pipeline.finetune.Finetune` (or a dict of its fields): masked
            finetuning after pruning; with ``alpha``, after every trial of the search.
        seed: seeds finetuning and solvers that draw random numbers.
        device: where the run computes; default: the model's device. The model is moved there
            (and back if the run fails); one that does not exist here (``"cuda"`` without
            CUDA) or holds no data (``"meta"``) is a ``ValueError``.
        options: options for the solver method (see its docstring).
        progress: show progress bars.
        skip_incompatible: leave dense, with a warning, the targets the budget cannot apply to
            (an N:M budget on an input width not divisible by M; SparseGPT's scripts do the
            same) instead of raising :class:`IncompatibleBudget`; they are listed in the
            report's ``skipped``.
        blockwise: prune block by block (:mod:`l0prune.pipeline.blockwise`): ``None`` (default) when
            the model is a stack of repeated blocks run one after the other (a transformer's
            ``model.layers``, ``transformer.h``, ``encoder.layer``) and every target outside
            the stack runs after it, else the whole-model path; ``True``: block by block or a
            ``ValueError`` saying why not; ``False``: the whole-model path. Both give the same
            masks with ``sequential=False`` and the same results up to float rounding with
            ``sequential=True``. Block by block, only the blocks visit ``device``: the
            validation loss and finetuning run where the model is.
        checkpoint: a folder where a block-by-block run with a fixed budget (``sparsity`` or a
            sized ``budget``, not ``alpha``) writes each finished block's weights and masks
            (:mod:`l0prune.pipeline.resume`); a model whose stack turns out not to be prunable
            block by block (with ``blockwise=None``) takes the whole-model path and writes
            nothing.
        resume: take the blocks finished in ``checkpoint`` by an earlier run with the same
            settings and calibration data (the result is bit for bit that of a run never
            interrupted); a checkpoint written with other settings or data is refused with one
            line naming them.
        rollback_dir: an existing folder where a block-by-block run moves the rollback copy of
            each finished block (safetensors files, removed when the run ends), so that memory
            holds the copy of one block at a time instead of a second copy of the stack; the
            whole-model path ignores it (its snapshot is taken up front).
        threads: torch CPU threads for the run (torch's setting is put back after it);
            default: torch's count capped by the CPUs this process may use (affinity and
            cgroup quota, :func:`l0prune.pipeline.threads.default_threads`). The report records it.
        executor: where the layer solves run (:mod:`l0prune.pipeline.executors`): ``None`` here; a
            :class:`concurrent.futures.Executor` (a ``ProcessPoolExecutor``, dask's
            ``Client.get_executor()``) or a ``dask.distributed.Client``, to which independent
            solves go together (every layer with ``sequential=False``, the layers that read one
            input with ``True``, a block's layers block by block), each task shipping a
            layer's weight, statistics, budget, method and options. On the CPU the result is
            bit for bit that of a run here with one torch thread (the tasks run with one). A
            task whose worker dies is started again where the cluster allows it, else the run
            fails naming the layer with the model as it was. Also a
            :class:`~l0prune.io.problem_files.ProblemWriter` or
            :class:`~l0prune.io.problem_files.SavedSolutions` (layer problems as files).

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
    _check_settings(loss_fn, sequential, seed, options, progress, skip_incompatible)
    with using_threads(threads) as count:
        report = _prune(
            model, calibration, start, sparsity=sparsity, alpha=alpha, validation=validation,
            loss_fn=loss_fn, method=method, budget=budget, targets=targets, ignore=ignore,
            sequential=sequential, finetune=finetune, seed=seed, device=device, options=options,
            progress=progress, skip_incompatible=skip_incompatible, blockwise=blockwise,
            checkpoint=checkpoint, resume=resume, rollback_dir=rollback_dir, executor=executor,
        )
    report.threads = count
    return report


def _prune(model, calibration, start, *, sparsity, alpha, validation, loss_fn, method, budget,
           targets, ignore, sequential, finetune, seed, device, options, progress,
           skip_incompatible, blockwise, checkpoint, resume, rollback_dir,
           executor) -> PruneReport:
    """:func:`prune` after its arguments are checked, on the run's threads."""
    config = finetune_config(finetune)
    family = budget if budget is not None else Unstructured()
    _check_blockwise(model, blockwise, checkpoint, resume, alpha, rollback_dir)
    solves = layer_solves(executor)
    device = run_device(model, device)
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    stack = blocks.find_stack(model) if blockwise is not False else None
    spill = None if stack is None or rollback_dir is None else tempfile.mkdtemp(
        prefix="l0prune-rollback-", dir=rollback_dir)
    # before any move: a failure puts the model back where it was
    snapshot = Snapshot(model) if stack is None else Rollback(model, spill)
    reading = ExitStack()  # reading shuffled loaders leaves their generators as they were
    reading.enter_context(unchanged_generators(calibration, validation))
    try:
        if stack is None:
            move(model, device)
        model.eval()
        if stack is None:
            discovery = discover(model, next(iter(calibration)), device)
        else:
            discovery, problem = blocks.discover(model, stack, next(iter(calibration)), home)
        if isinstance(sparsity, Mapping):
            chosen = _dict_targets(model, discovery.order, sparsity, targets, ignore)
        else:
            chosen = select_targets(model, discovery.order, targets, ignore)
        chosen, skipped = _fitting(chosen, family, skip_incompatible)
        solves.check(targets=chosen, sequential=sequential, fixed=alpha is None)
        if stack is not None:
            stack = _settle(stack, problem or outside_problem(stack, chosen, discovery),
                            blockwise, resume)
            if stack is None or config is not None:  # the whole model changes
                snapshot.capture(model)
            if stack is None:
                move(model, device)
        common = dict(method=method, options=method_options(method, options, seed),
                      sequential=sequential, device=device, progress=progress, solves=solves)
        if stack is None:
            pruner = LayerPruner(model, calibration, chosen, discovery, snapshot, **common)
        else:
            pruner = BlockPruner(
                model, calibration, chosen, discovery, snapshot, stack, **common,
                keep_inputs=alpha is not None,
                checkpoint=None if checkpoint is None else Checkpoint(checkpoint, resume),
            )
        run = _Run(
            model, pruner, snapshot, validation=validation, loss_fn=loss_fn or cross_entropy,
            finetune=config, calibration=calibration, device=device if stack is None else home,
            seed=seed, progress=progress,
        )
        if alpha is not None:
            run.search(alpha, family)
        elif isinstance(sparsity, Mapping):
            run.fixed(allocation.per_layer(chosen, family, sparsity))
        elif sparsity is not None:
            run.fixed(allocation.uniform(chosen, family, sparsity))
        else:
            run.fixed({t.name: allocation.given(t, family) for t in chosen})
        report = run.report(method, budget_text(family), sequential, alpha, start)
        report.skipped = skipped
        report.perplexity = getattr(loss_fn, "perplexity", False) is True
        if stack is not None:
            report.blocks = f"{stack.name}, {len(stack.blocks)} blocks"
        if solves.placeholder:  # nothing was solved: the model goes back as it was
            snapshot.restore()
    except BaseException:
        snapshot.restore()
        raise
    finally:
        reading.close()
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
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
    budgets: Mapping[str, Budget] | None = None


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
        self.bar = None

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
        return _Outcome(1.0 - kept / total, results, loss, before, budgets=dict(budgets))

    def dense_evaluate(self) -> float:
        """The dense model's loss: the first pass over the validation data, so a batch that
        does not fit the model is named there."""
        with explained(self.model, "validation"):
            return self.evaluate()

    def fixed(self, budgets: Mapping[str, Budget]) -> None:
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
        targets = self.pruner.targets
        total = sum(t.total for t in targets)

        def uniform(s: float, phase: str) -> bool:
            return self._trial(allocation.uniform(targets, family, s), _stage("uniform", phase), s)

        def allocated(best_uniform: float):
            if self.outcome is None:
                return None
            self.pruner.moments = self.outcome.moments
            curves = self.pruner.curves(family, GRID)
            if isinstance(self.pruner, BlockPruner):  # its curves leave the model dense
                self.current = None
            return lambda s, phase: self._trial(
                allocation.spread(curves, int(round((1 - s) * total))),
                _stage("allocated", phase), s,
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
        dense = [t for t in self.pruner.targets
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
            outcome.moments = dict(self.pruner.moments)
            self.outcome = outcome
        self.bar.set_postfix(stage=stage, sparsity=f"{outcome.sparsity:.3f}",
                             ratio=f"{outcome.loss / self.dense_loss:.4f}")
        self.bar.update()
        return met

    def _put_back(self, outcome: _Outcome) -> None:
        """Make the model hold ``outcome``'s state again."""
        self.snapshot.restore(devices=False)
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
        shapes = {t.name: list(t.out_in_shape) for t in self.pruner.targets}
        layers = [
            LayerReport(r.name, shapes[r.name], r.kept, r.total, r.relative_error, r.seconds)
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


def _stage(stage: str, phase: str) -> str:
    """A trial's stage as reported: ``"uniform"``, ``"uniform scan"``, ``"allocated"``, ..."""
    return stage if phase == "bisection" else f"{stage} {phase}"


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
            fraction(value, f"sparsity[{name!r}]")
    elif sparsity is not None:
        fraction(sparsity, "sparsity")
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


def _check_settings(loss_fn, sequential, seed, options, progress, skip_incompatible) -> None:
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable (outputs, batch) -> scalar, got {loss_fn!r}")
    for name, value in (("sequential", sequential), ("progress", progress),
                        ("skip_incompatible", skip_incompatible)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options must be a dict of solver options, got {options!r}")


def _check_blockwise(model, blockwise, checkpoint, resume, alpha, rollback_dir) -> None:
    if blockwise is not None and not isinstance(blockwise, bool):
        raise ValueError(f"blockwise must be None, True or False, got {blockwise!r}")
    if not isinstance(resume, bool):
        raise ValueError(f"resume must be True or False, got {resume!r}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be a folder path, got {type(checkpoint).__name__}")
    if rollback_dir is not None and not (
        isinstance(rollback_dir, (str, os.PathLike)) and os.path.isdir(rollback_dir)
    ):
        raise ValueError(f"rollback_dir must be an existing folder, got {rollback_dir!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the folder of the run to resume)")
    if checkpoint is not None and alpha is not None:
        raise ValueError(
            "checkpoint= works with a fixed budget (sparsity= or a sized budget), not alpha= "
            "(every trial of the search prunes anew)"
        )
    if checkpoint is not None and blockwise is False:
        raise ValueError("checkpoint= needs block-by-block pruning; got blockwise=False")
    if (blockwise or checkpoint is not None) and blocks.find_stack(model) is None:
        raise ValueError(
            f"{'blockwise=True' if blockwise else 'checkpoint='} needs a model built as a stack "
            "of repeated blocks (an nn.ModuleList of two or more modules of one type); "
            f"{type(model).__name__} has none"
        )


def _settle(stack, problem: str | None, blockwise: bool | None, resume: bool):
    """``stack`` if it can be pruned block by block, ``None`` for the whole-model path."""
    if problem is None:
        return stack
    if blockwise or resume:
        what = "blockwise=True" if blockwise else "resume=True"
        raise ValueError(
            f"{what} needs block-by-block pruning, but the stack {stack.name!r} cannot be: "
            f"{problem}"
        )
    return None


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


class IncompatibleBudget(ValueError):
    """The budget cannot apply to a target layer (an N:M budget on an input width that M does
    not divide, a structured group that does not divide it).

    Attributes:
        layer: the layer's name.
        budget: the budget, as text (``NM(n=2, m=4)``).
        shape: the weight's shape, out x in (x kernel).
        reason: why, from the budget.
    """

    def __init__(self, layer: str, budget: str, shape: tuple[int, ...], reason: str):
        self.layer, self.budget, self.shape, self.reason = layer, budget, shape, reason
        super().__init__(
            f"budget {budget} does not fit layer {layer!r} (weight "
            f"{'x'.join(map(str, shape))}): {reason}; leave it dense with ignore=[{layer!r}], "
            "or every such layer with skip_incompatible=True"
        )


def _fitting(targets: Sequence[Target], family: Budget,
             skip: bool) -> tuple[list[Target], dict[str, str]]:
    """The targets ``family`` fits, and why each other one does not (by name); without
    ``skip`` the first misfit raises :class:`IncompatibleBudget`."""
    fitting, skipped = [], {}
    for t in targets:
        try:
            allocation.layer_family(t, family).max_count(t.shape)
            if family.sized:
                allocation.layer_family(t, family).check(t.shape)
        except ValueError as err:
            misfit = IncompatibleBudget(t.name, budget_text(family), t.out_in_shape, str(err))
            if not skip:
                raise misfit from None
            warnings.warn(f"layer {t.name!r} left dense: {misfit.reason}", stacklevel=3)
            skipped[t.name] = misfit.reason
        else:
            fitting.append(t)
    if not fitting:
        raise ValueError(
            f"budget {budget_text(family)} fits none of the target layers "
            f"({', '.join(skipped)}): nothing to prune"
        )
    return fitting, skipped
