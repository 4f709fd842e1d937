"""``l0prune.prune``: prune a trained torch model to a sparsity or within a loss tolerance.

The run, in order (DESIGN.md 2.6 and 3):

1. the settings become a :class:`~l0prune.PruneConfig` (checked once); the run's frame is a
   :class:`~l0prune.pipeline.session.RunSession` (threads, the model captured before anything
   changes, the device); padded token batches are regrouped by length for the statistics
   (:mod:`l0prune.data.regroup`), so padding costs their forward passes nothing;
2. one forward pass on a calibration batch finds the prunable layers, the order they run in and
   which of them read the same input (:func:`~l0prune.model.statistics.discover`); the targets
   are chosen from them (:func:`~l0prune.model.targets.select_targets`), and a run whose
   statistics and solves cannot fit in memory is refused
   (:func:`~l0prune.pipeline.footprint.check_memory`);
3. a :class:`~l0prune.pipeline.interface.Pipeline` prunes them: block by block
   (:class:`~l0prune.pipeline.blockwise.BlockPruner`) for a model built as a stack of repeated
   blocks (a transformer), else on the whole model
   (:class:`~l0prune.pipeline.layerwise.LayerPruner`);
4. with ``sparsity`` (or a sized budget) every target is pruned once, then finetuned if asked;
   with ``alpha``, the search of :mod:`l0prune.pipeline.trials`;
5. the report.

Any exception (a bad batch, a solver error, ``KeyboardInterrupt``) puts the model back exactly as
it was before the exception propagates, on the device it was on. The price is memory: the
whole-model path holds a copy of the model's parameters and buffers for the whole run, taken
before the model moves to ``device``; block by block, the copies are taken per block just before
each block changes (:class:`~l0prune.model.rollback.Rollback`), and with ``checkpoint=`` each
finished block is written to disk so that a run resumes (:mod:`l0prune.pipeline.resume`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sized

from torch import nn

from .config import PruneConfig
from .data.batches import LossFn, cross_entropy
from .data.hf_datasets import batches_of
from .data.regroup import regrouped
from .model import blocks
from .model.rollback import Rollback
from .model.statistics import discover
from .model.targets import select_targets, targets_by_name
from .pipeline import allocation, workflow
from .pipeline.allocation import IncompatibleBudget
from .pipeline.blockwise import BlockPruner, outside_problem
from .pipeline.executors import LayerSolves, layer_solves
from .pipeline.footprint import check_memory
from .pipeline.layerwise import LayerPruner
from .pipeline.resume import Checkpoint
from .pipeline.session import RunSession
from .pipeline.trials import Trials
from .report import PruneReport

__all__ = ["IncompatibleBudget", "prune"]


def prune(
    model: nn.Module,
    calibration: Iterable,
    config: PruneConfig | None = None,
    *,
    validation: Iterable | None = None,
    loss_fn: LossFn | None = None,
    executor=None,
    **settings,
) -> PruneReport:
    """Prune ``model`` in place, layer by layer, by solving each layer's pruning problem.

    The settings are those of :class:`~l0prune.PruneConfig`, given as a ``config``, as keywords
    (``prune(model, data, sparsity=0.5, method="obs")``), or both (the keywords replace the
    config's fields). Give exactly one of ``sparsity`` (a fixed target) or ``alpha`` (the
    sparsest model whose validation loss is at most ``alpha`` times the dense one), or a sized
    ``budget`` such as ``"2:4"``. Each pruned layer holds its pruned weight in place (its state
dict saves and loads like the dense model's), with its mask beside it as bits
(:func:`~l0prune.mask_of`).

    Args:
        model: a trained torch model (changed in place).
        calibration: re-iterable batches (a ``DataLoader`` or a list) whose inputs give each
            layer's statistics: tensors, ``(input, ..., target)`` tuples or dicts of keyword
            inputs (``model(**batch)``; ``attention_mask`` zeros are left out); or a tokenised
            ``datasets.Dataset`` / ``IterableDataset``, read in padded batches of 8 with their
            attention mask (:mod:`l0prune.data.hf_datasets`).
        config: the run's settings (:class:`~l0prune.PruneConfig`), or ``None``.
        validation: re-iterable batches (or a dataset) for the loss (needed with ``alpha``);
            with a fixed sparsity, the report gives the dense and pruned losses on them.
        loss_fn: ``loss_fn(outputs, batch) -> scalar``; default: the model's own ``loss``
            output or cross-entropy against the batch's last item / ``labels``. For a causal
            LM on :func:`~l0prune.text_batches`, :func:`~l0prune.next_token_nll` (a loss with
            ``perplexity = True`` makes the report give perplexities).
        executor: where the layer solves run (:mod:`l0prune.pipeline.executors`): ``None``
            here; a :class:`concurrent.futures.Executor` (a ``ProcessPoolExecutor``, dask's
            ``Client.get_executor()``) or a ``dask.distributed.Client``, to which independent
            solves go together. On the CPU the result is bit for bit that of a run here with
            one torch thread (the tasks run with one). A task whose worker dies is started again
            where the cluster allows it, else the run fails naming the layer with the model as
            it was.
        **settings: fields of :class:`~l0prune.PruneConfig` (``sparsity``, ``alpha``,
            ``method``, ``budget``, ``targets``, ``ignore``, ``sequential``, ``finetune``,
            ``seed``, ``device``, ``blockwise``, ``checkpoint``, ``resume``, ...), and
            ``mask_structure``, llm-compressor's name for ``budget`` (``"2:4"``; ``"0:0"``:
            unstructured).

    Returns:
        A :class:`~l0prune.report.PruneReport`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import l0prune
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> data = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
        >>> report = l0prune.prune(model, data, sparsity=0.5, method="wanda", progress=False)
        >>> round(report.sparsity, 2), sorted(l0prune.masks_of(model))
        (0.5, ['0'])
    """
    config = workflow.configured(config, settings, "prune")
    calibration, validation = batches_of(calibration), batches_of(validation)
    check_inputs(model, calibration, validation, loss_fn, config)
    return run(model, calibration, config, validation=validation, loss_fn=loss_fn,
               solves=layer_solves(executor))


def check_inputs(model, calibration, validation, loss_fn, config: PruneConfig) -> None:
    """:func:`~l0prune.pipeline.workflow.check_inputs`, and a model that can be pruned block
    by block when the settings ask for it."""
    if config.sparsity is not None and config.alpha is not None:
        raise ValueError(f"give exactly one of sparsity= or alpha=, not both (got sparsity="
                         f"{config.sparsity!r}, alpha={config.alpha!r})")
    workflow.check_inputs(model, calibration, validation, loss_fn, config)
    if (config.blockwise or config.checkpoint is not None) and blocks.find_stack(model) is None:
        raise ValueError(
            f"{'blockwise=True' if config.blockwise else 'checkpoint='} needs a model built as "
            "a stack of repeated blocks (an nn.ModuleList of two or more modules of one type); "
            f"{type(model).__name__} has none"
        )


def run(model: nn.Module, calibration: Iterable, config: PruneConfig, *,
        validation: Iterable | None, loss_fn: LossFn | None,
        solves: LayerSolves) -> PruneReport:
    """:func:`prune` with its inputs checked; ``solves`` says where the layer solves go (an
    executor's, or the problem files of :mod:`l0prune.io.problem_files`)."""
    stack = blocks.find_stack(model) if config.blockwise is not False else None
    spill = None if stack is None or config.rollback_dir is None else tempfile.mkdtemp(
        prefix="l0prune-rollback-", dir=config.rollback_dir)
    snapshot = None if stack is None else Rollback(model, spill)
    with RunSession(model, config, (calibration, validation), snapshot,
                    move_model=stack is None) as session:
        if spill is not None:
            session.on_exit(shutil.rmtree, spill, True)
        pipeline, skipped = _pipeline(model, regrouped(calibration), config, session, stack,
                                      solves)
        trials = Trials(
            model, pipeline, session.snapshot, validation=validation,
            loss_fn=loss_fn or cross_entropy, finetune=config.finetune,
            calibration=calibration, device=pipeline.model_device, seed=config.seed,
            progress=config.progress,
        )
        family = config.budget
        if config.alpha is not None:
            trials.search(config.alpha, family)
        elif isinstance(config.sparsity, Mapping):
            trials.fixed(allocation.per_layer(pipeline.targets, family, config.sparsity))
        elif config.sparsity is not None and not family.sized:
            trials.fixed(allocation.uniform(pipeline.targets, family, config.sparsity))
        else:
            trials.fixed({t.name: allocation.given(t, family) for t in pipeline.targets})
        report = session.finish(trials.report(config))
        report.skipped = skipped
        report.perplexity = getattr(loss_fn, "perplexity", False) is True
        report.blocks = pipeline.blocks
        if solves.solves_nothing:  # a sink: the model goes back as it was
            session.snapshot.restore()
    return report


def _pipeline(model, calibration, config: PruneConfig, session: RunSession, stack,
              solves: LayerSolves):
    """The run's targets (and those the budget skips), and the pipeline that prunes them:
    block by block where the stack allows it, else on the whole model (moved to the device)."""
    batch = next(iter(calibration))
    if stack is None:
        discovery = discover(model, batch, session.device)
    else:
        discovery, problem = blocks.discover(model, stack, batch, session.home)
    if isinstance(config.sparsity, Mapping):
        chosen = targets_by_name(model, discovery.order, config.sparsity, config.targets,
                                 config.ignore)
    else:
        chosen = select_targets(model, discovery.order, config.targets, config.ignore)
    chosen, skipped = allocation.fitting(chosen, config.budget, config.skip_incompatible)
    solves.check(targets=chosen, sequential=config.sequential, fixed=config.fixed)
    settled = None if stack is None else _settle(
        stack, problem or outside_problem(stack, chosen, discovery), config)
    check_memory(chosen, discovery, statistics=solves.statistics(config.method,
                                                                 config.solver_options),
                 method=config.method, sequential=config.sequential, fixed=config.fixed,
                 family=config.budget, h_block=config.h_block, device=session.device,
                 stack=settled, batches=len(calibration) if isinstance(calibration, Sized) else 1)
    if stack is not None:
        if settled is None or config.finetune is not None:  # the whole model changes
            session.snapshot.capture(model)
        if settled is None:
            session.move_model_to_device()
        stack = settled
    if stack is None:
        return LayerPruner(model, calibration, chosen, discovery, session.snapshot, config,
                           device=session.device, solves=solves), skipped
    checkpoint = None if config.checkpoint is None else session.enter(
        Checkpoint(config.checkpoint, config.resume))
    return BlockPruner(model, calibration, chosen, discovery, session.snapshot, stack, config,
                       device=session.device, keep_inputs=config.alpha is not None,
                       checkpoint=checkpoint, solves=solves), skipped


def _settle(stack, problem: str | None, config: PruneConfig):
    """``stack`` if it can be pruned block by block, ``None`` for the whole-model path."""
    if problem is None:
        return stack
    if config.blockwise or config.resume:
        what = "blockwise=True" if config.blockwise else "resume=True"
        raise ValueError(
            f"{what} needs block-by-block pruning, but the stack {stack.name!r} cannot be: "
            f"{problem}"
        )
    return None
