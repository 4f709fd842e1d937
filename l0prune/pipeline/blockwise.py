"""Pruning a stack of repeated blocks block by block, from block 0's inputs captured once.

The whole-model path (:class:`~l0prune.pipeline.layerwise.LayerPruner`) runs the whole model over
the calibration data to take statistics: once with ``sequential=False``, once per input group with
``sequential=True`` (about 130 passes for a 32-block LLM). :class:`BlockPruner` runs the
model's prefix (the embedding) once per batch, keeps block 0's inputs on the run's device
(:func:`l0prune.model.blocks.capture`) and then, block after block: copies the block on the CPU for
the rollback (:class:`~l0prune.model.rollback.Rollback`), moves it alone to the run's device, takes
its layers' statistics from the cached inputs, solves (:meth:`LayerPruner.solve
<l0prune.pipeline.layerwise.LayerPruner.solve>`), writes the weights, runs the block to make the
next block's inputs (not the last block: its outputs are not needed) and moves it back. One pass
over the calibration data in all; the rest of the model stays where it is.

The statistics are those of the whole-model path, so the results are too (the same masks with
``sequential=False``; with ``sequential=True`` the same up to float rounding):

- ``sequential=False``: one activation stream ``X_0`` (the dense model's): each block's
  statistics come from the dense block on ``X_0``, which also gives the next ``X_0``.
- ``sequential=True``: two streams, the pruned one ``X`` (inputs with every earlier layer
  pruned) and the dense one ``X_0``. The dense block does not change while the block is pruned,
  so one pass of it over ``X_0`` keeps the dense side of all its input groups (the inputs
  ``X_0``, or the outputs ``X_0 W^T`` where narrower, and the outputs' energies:
  :func:`l0prune.model.statistics.capture_dense`) and its outputs are the next block's ``X_0``. The
  groups are then handled in the order they run; each takes paired statistics (``H = X^T X / N``
  and ``X^T X_0 / N`` or ``(X_0 W^T)^T X / N``) from a pass of the block as pruned so far on
  ``X``, stopped at the group, against the kept dense side (the very first group: ``H`` alone,
  as in the whole-model path). At the end the pruned block maps ``X`` to the next block's ``X``. Per
  block and batch: one dense pass, one pruned pass per group (each stopped at it), one to
  advance; a dense reference pass per group instead would add one (stopped) pass per group.

With an executor and ``sequential=False``, a block's solves go out as soon as its statistics
are taken and the sweep goes on to the next block (whose dense inputs do not depend on them):
the workers solve every block's layers side by side while this process takes the statistics,
instead of waiting for each block's largest layer; the weights are written when the solutions
come back, block by block, in order (and each finished block then checkpointed).

Memory on the run's device: one block, its groups' float64 statistics (freed once the group is
solved), the cached activations: one stream (``sequential=False``) or two (``True``), plus
block 0's inputs kept for a run that prunes more than once (the loss-tolerance search). With
``sequential=True`` also the dense side of the block's groups (real tokens only, in the
activations' dtype, each group's freed once it is solved): per group the narrower of its
inputs and its members' outputs, one hidden width each for the four groups of a BERT, GPT-2
or LLaMA block (4 in all, against 2 for the cached streams). They are taken in one pass when
they fit :data:`DENSE_ROW_WIDTHS` (8) stream widths per position, else in runs of consecutive
groups that do (:func:`dense_runs`; one dense pass per run, and one more to advance ``X_0``).
Where the model is (the CPU): the model, with its pruned weights in place (the results refer
to them, no second copy), the masks as bits (1/32 of a float32 weight), and the rollback's
copies of the blocks changed so far, or of one block when they go to disk
(:class:`~l0prune.model.rollback.Rollback` with a folder).

A method that reads no statistics (magnitude) runs no pass at all: each block visits the
device only to be solved. One that reads only ``diag H`` (Wanda) keeps one stream: the dense one
(``sequential=False``) or the pruned one (``True``: each group's diagonal from the block as
pruned so far, the stream then advanced through the pruned block), unpaired.

Targets outside the stack run after it (a pooler, a projection after the last block): they are
pruned after the stack by whole-model passes as in the whole-model path (``sequential=True``:
one pass per input group; ``False``: one pass, with the dense weights put back for it). Targets
that run before or among the blocks cannot be pruned this way (see :func:`outside_problem`).

The loss-tolerance search's allocated stage needs each layer's error curve on the statistics of
the best uniform trial. Those statistics are freed with their block (at LLM scale all layers'
paired statistics would take more memory than the model), so :meth:`BlockPruner.curves` gets
them back by one more sweep over the blocks at that trial's budgets, from the cached inputs.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache, partial

import torch
from torch import nn

from l0prune.config import PruneConfig
from l0prune.model.blocks import BlockInputs, Stack, capture, run_block
from l0prune.model.masks import attach
from l0prune.model.rollback import Rollback
from l0prune.model.snapshot import move
from l0prune.model.statistics import (
    DenseSide,
    Discovery,
    Moments,
    capture_dense,
    collect,
    dense_width,
    input_groups,
)
from l0prune.model.targets import Target
from solvers import Budget

from .allocation import Curve
from .executors import LayerSolves
from .interface import LayerResult
from .layerwise import LayerPruner
from .progress import note, progress
from .resume import Checkpoint, weights_digest

__all__ = ["DENSE_ROW_WIDTHS", "BlockPruner", "dense_runs", "give_back_freed_memory",
           "outside_problem"]


def outside_problem(stack: Stack, targets: Sequence[Target], discovery: Discovery) -> str | None:
    """Why ``targets`` cannot be pruned block by block, or ``None``.

    Targets outside the stack must run after its last layer: a target that runs before (an
    input projection such as OPT-350m's ``project_in``) would change block 0's inputs.

    Args:
        stack: the model's stack.
        targets: the run's targets.
        discovery: the model's discovery.

    Returns:
        One line, or ``None``.

    Example:
        >>> from torch import nn
        >>> stack = Stack("blocks", nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)]))
        >>> d = Discovery(["embed", "blocks.0", "blocks.1"], {}, {})
        >>> outside_problem(stack, [Target("embed", nn.Linear(2, 2))], d)
        "target 'embed' runs before the last block of 'blocks'"
    """
    position = {name: i for i, name in enumerate(discovery.order)}
    prefix = f"{stack.name}." if stack.name else ""
    inside = [position[n] for n in discovery.order
              if n.startswith(prefix) and n[len(prefix):].split(".")[0].isdigit()]
    end = max(inside, default=-1)
    for t in targets:
        if stack.index(t.module) is None and position[t.name] < end:
            return f"target {t.name!r} runs before the last block of {stack.name!r}"
    return None


@cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc's Linux
        return None


def give_back_freed_memory() -> None:
    """Return the memory freed in the C heap to the system (glibc's ``malloc_trim``; elsewhere
    nothing).

    glibc keeps freed blocks of up to 32 MiB in its heap, where they stay resident: the
    temporaries of the forward passes and of earlier solves would sit beside the next solve.
    Block by block that is most of the peak above the model; given back before every solve and
    after every block, the peak is about the model, one block, the activations and one layer
    solve.

    Example:
        >>> give_back_freed_memory()
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


#: The dense sides of a block's input groups are captured in one dense pass when they take at
#: most this many stream widths per position (see the module docstring).
DENSE_ROW_WIDTHS = 8.0


def _moved(found: Mapping[str, Moments], device: torch.device) -> dict[str, Moments]:
    """``found`` on ``device``, the tensors a group shares (``H``, ``cross``) moved once."""
    moved: dict[int, torch.Tensor] = {}

    def once(x):
        if x is not None and id(x) not in moved:
            moved[id(x)] = x.to(device)
        return None if x is None else moved[id(x)]

    return {name: Moments(once(m.H), once(m.cross), once(m.outputs), once(m.energy))
            for name, m in found.items()}


class _Runner:
    """A block as ``collect`` calls a model: ``runner(index=i)`` runs batch ``i`` of a stream
    (and, with ``outputs``, writes the block's output there at ``i``)."""

    def __init__(self, block: nn.Module, inputs: BlockInputs, stream: list[torch.Tensor],
                 outputs: list[torch.Tensor] | None = None):
        self.block, self.inputs, self.stream, self.outputs = block, inputs, stream, outputs

    def __call__(self, index: int, attention_mask=None):
        output = run_block(self.block, self.inputs, index, self.stream[index])
        if self.outputs is not None:
            self.outputs[index] = output
        return output


def dense_runs(groups: Sequence[list[Target]], width: int,
               budget: float = DENSE_ROW_WIDTHS) -> list[list[list[Target]]]:
    """``groups`` cut into runs of consecutive groups whose dense sides are captured together.

    A group's dense side takes :func:`~l0prune.model.statistics.dense_width` values per position
    (its inputs, or its members' outputs when fewer), ``width`` is the stream's (the hidden
    size); a run holds at most ``budget`` stream widths, a group wider than that is a run alone,
    and so is a convolution (patches: no fixed width per position).

    Args:
        groups: a block's input groups, in the order they run.
        width: the stream's width per position.
        budget: stream widths per run.

    Returns:
        The runs (of the groups themselves, not copies).

    Example:
        >>> bert = [[Target(n, nn.Linear(4, 4))] for n in "qoi"]
        >>> bert.append([Target("d", nn.Linear(16, 16))])
        >>> [[g[0].name for g in run] for run in dense_runs(bert, 4)]
        [['q', 'o', 'i', 'd']]
        >>> [[g[0].name for g in run] for run in dense_runs(bert, 4, budget=4)]
        [['q', 'o', 'i'], ['d']]
    """
    runs: list[list[list[Target]]] = []
    size = 0.0
    for group in groups:
        t = group[0]
        wide = float("inf") if t.is_conv else dense_width(group) / width
        if runs and size + wide <= budget:
            runs[-1].append(group)
            size += wide
        else:
            runs.append([group])
            size = wide
    return runs


class BlockPruner:
    """Prunes the targets of a block-stack model block by block (see the module docstring).

    A :class:`~l0prune.pipeline.interface.Pipeline`, as
    :class:`~l0prune.pipeline.layerwise.LayerPruner`: :meth:`run` prunes and attaches the
    masks, :meth:`curves` gives the error curves of a run.

    Args:
        model: the model; its targets must be dense when :meth:`run` starts.
        calibration: re-iterable calibration batches.
        targets: the layers to prune (see :func:`outside_problem`).
        discovery: the model's discovery.
        rollback: the run's :class:`~l0prune.model.rollback.Rollback`; each block is captured in it
            just before it changes.
        stack: the model's stack.
        config: the run's configuration (its method, options and seed, ``sequential``: see the
            module docstring, ``progress``: a progress bar over blocks).
        device: where blocks, cached activations, statistics and solves go.
        keep_inputs: keep block 0's inputs for later runs (the search) instead of freeing them
            as the first run moves past block 0.
        checkpoint: write each finished block there, and take the finished ones from there on
            a resume.
        solves: where the solves run (:class:`~l0prune.pipeline.executors.LayerSolves`; default:
            here); a block's layers go out together (``sequential=True``: those that read one
            input).
        dense_row_widths: ``sequential=True``: the budget of the dense sides captured in one
            pass, in stream widths per position (see :func:`dense_runs`; default
            :data:`DENSE_ROW_WIDTHS`; 0: a dense pass per group).

    Attributes:
        passes: passes over the calibration data so far.
        last_budgets: the budgets of the last run, from which :meth:`curves` recomputes its
            statistics (its :meth:`curve_basis`).
        curves_reset_model: ``True``: :meth:`curves` prunes the blocks again to get their
            statistics back and leaves the model dense.
        model_device: where the model is (only the blocks visit ``device``).
        blocks: the stack's name and block count.

    Example:
        >>> from solvers import Unstructured
        >>> from l0prune.pipeline.allocation import uniform
        >>> from l0prune.model.blocks import discover, find_stack
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        ...     def forward(self, x):
        ...         for block in self.blocks:
        ...             x = block(x).relu()
        ...         return x
        >>> net, cpu = Net().eval(), torch.device("cpu")
        >>> data = [torch.randn(32, 4)]
        >>> stack = find_stack(net)
        >>> discovery, problem = discover(net, stack, data[0], cpu)
        >>> targets = [Target(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        >>> config = PruneConfig(sparsity=0.5, method="obs", progress=False)
        >>> pruner = BlockPruner(net, data, targets, discovery, Rollback(net), stack, config,
        ...                      device=cpu)
        >>> results = pruner.run(uniform(targets, Unstructured(), 0.5))
        >>> [r.kept for r in results.values()], pruner.passes
        ([8, 8, 8], 1)
    """

    curves_reset_model = True

    def __init__(
        self,
        model: nn.Module,
        calibration: Iterable,
        targets: Sequence[Target],
        discovery: Discovery,
        rollback: Rollback,
        stack: Stack,
        config: PruneConfig,
        *,
        device: torch.device,
        keep_inputs: bool = False,
        checkpoint: Checkpoint | None = None,
        solves: LayerSolves | None = None,
        dense_row_widths: float | None = None,
    ):
        self.model, self.calibration, self.targets = model, calibration, list(targets)
        self.discovery, self.rollback, self.stack = discovery, rollback, stack
        self.config, self.sequential, self.device = config, config.sequential, device
        self.keep_inputs, self.checkpoint = keep_inputs, checkpoint
        self.dense_row_widths = DENSE_ROW_WIDTHS if dense_row_widths is None else dense_row_widths
        self.home = self.model_device = next((p.device for p in model.parameters()),
                                             torch.device("cpu"))
        self.blocks = f"{stack.name}, {len(stack.blocks)} blocks"
        self.layers = LayerPruner(model, calibration, targets, discovery, rollback,
                                  config.replace(progress=False), device=device, solves=solves)
        self.kind = self.layers.kind
        self.paired = config.sequential and self.kind == "full"
        self.groups = input_groups(self.targets, discovery)
        self.block_groups: list[list[list[Target]]] = [[] for _ in stack.blocks]
        self.suffix: list[list[Target]] = []
        for group in self.groups:
            index = stack.index(group[0].module)
            (self.suffix if index is None else self.block_groups[index]).append(group)
        self.passes = 0
        self.last_budgets: dict[str, Budget] = {}
        self._inputs: BlockInputs | None = None

    # --- the public interface --------------------------------------------------------------

    def run(self, budgets: Mapping[str, Budget]) -> dict[str, LayerResult]:
        """Prune every target under its budget, block by block, and attach the masks.

        Args:
            budgets: a sized budget per target name.

        Returns:
            A :class:`~l0prune.pipeline.layerwise.LayerResult` per target name, in the order the
            layers run; each ``weight`` is the layer's own (not a copy), each mask's bits on
            the model's device.
        """
        self.last_budgets = dict(budgets)
        results = self._sweep(budgets, self.checkpoint, None)
        for target in self.targets:
            result = results[target.name]
            attach(target.module, result.weight, result.mask)
        return results

    def curve_basis(self) -> dict[str, Budget]:
        """The budgets of the run just done: :meth:`curves` recomputes its statistics from
        them (at LLM scale all layers' statistics would take more memory than the model)."""
        return dict(self.last_budgets)

    def curves(self, family: Budget, grid: Sequence[float],
               basis: Mapping[str, Budget]) -> list[Curve]:
        """Each target's error curve at the sparsities in ``grid``, on the statistics of the
        run at the budgets ``basis`` (from :meth:`curve_basis`).

        The statistics are recomputed by a sweep at those budgets; the model is dense when
        this returns.

        Args:
            family: the run's budget family.
            grid: sparsities in [0, 1).
            basis: the budgets per target.

        Returns:
            One :class:`~l0prune.pipeline.allocation.Curve` per target.
        """
        found: dict[str, Curve] = {}
        self.rollback.restore()
        self.model.eval()
        try:
            self._sweep(basis, None, (family, grid, found))
        finally:
            self.rollback.restore()
            self.model.eval()
        return [found[t.name] for t in self.targets]

    # --- the sweep ---------------------------------------------------------------------------

    def _block_inputs(self) -> BlockInputs:
        if self._inputs is None or self._inputs.hidden is None:
            self.passes += 1
            self._inputs = capture(self.model, self.stack, self.calibration, self.device)
        return self._inputs

    def _settings(self, budgets: Mapping[str, Budget], digest: str) -> dict:
        return {
            "config": self.config.result_settings(),
            "budgets": {name: budget.text for name, budget in sorted(budgets.items())},
            "targets": {t.name: list(t.weight_shape) for t in self.targets},
            "stack": f"{self.stack.name} ({len(self.stack.blocks)} blocks)",
            "device": str(self.device),
            "torch": torch.__version__,
            "calibration": digest,
        }

    def _checkpoint_news(self, checkpoint: Checkpoint) -> str:
        """One line: the blocks a resume takes from ``checkpoint``, or those a new run there
        replaces."""
        blocks = len(self.stack.blocks)
        if checkpoint.resumed:
            return (f"resume: {min(checkpoint.found, blocks)} of {blocks} blocks taken from "
                    f"{checkpoint.folder}")
        if checkpoint.found:
            return (f"starting again: the {checkpoint.found} finished blocks in "
                    f"{checkpoint.folder} are replaced (resume=True, --resume on the command "
                    "line, takes them)")
        return f"checkpoint: each finished block of {blocks} is kept in {checkpoint.folder}"

    def _sweep(self, budgets, checkpoint: Checkpoint | None, curves) -> dict[str, LayerResult]:
        inputs = self._block_inputs() if self.kind != "none" else None
        if checkpoint is not None:
            checkpoint.start(self._settings(budgets, "no data read" if inputs is None
                                            else inputs.digest))
            note(self._checkpoint_news(checkpoint), self.config.progress)
        dense = [] if inputs is None else list(inputs.hidden)
        pruned = list(dense) if self.paired else dense
        if inputs is not None and not self.keep_inputs:
            inputs.hidden = None
        data = [] if inputs is None else [{"index": i, "attention_mask": mask}
                                          for i, mask in enumerate(inputs.masks)]
        results: dict[str, LayerResult] = {}
        pending: list = []  # blocks whose solves are out (index, their results, dense digest)
        with progress("blocks", "block", total=len(self.stack.blocks),
                      enabled=self.config.progress,
                      transient=True) as bar:
            for index, block in enumerate(self.stack.blocks):
                groups = self.block_groups[index]
                final = index == len(self.stack.blocks) - 1  # its outputs are not needed
                members = [t for group in groups for t in group]
                digest = weights_digest(members) if checkpoint is not None else ""
                done = None if checkpoint is None else checkpoint.load(
                    index, members, digest, {t.name: budgets[t.name] for t in members})
                self.rollback.capture(block)
                move(block, self.device)
                if done is None:
                    finish = self._block(block, inputs, data, groups, budgets, dense, pruned,
                                         first=not results, final=final, curves=curves)
                    pending.append((index, finish, digest))
                    if not self._defer(curves):
                        results.update(self._finish(pending, checkpoint))
                else:
                    with torch.no_grad():
                        for t in members:
                            t.module.weight.copy_(done[t.name].weight)
                    if not final:
                        self._advance(block, inputs, dense, pruned, done)
                    results.update(self._in_place(done))
                move(block, self.home)
                self.rollback.release(block)
                give_back_freed_memory()
                bar.update()
            results.update(self._finish(pending, checkpoint))
        del dense, pruned
        results.update(self._suffix(budgets, results, curves))
        return {t.name: results[t.name] for group in self.groups for t in group}

    def _defer(self, curves) -> bool:
        """Whether a block's solves may finish later (see the module docstring)."""
        return curves is None and not self.sequential and self.layers.solves.concurrent

    def _finish(self, pending: list, checkpoint: Checkpoint | None) -> dict[str, LayerResult]:
        """The results of the blocks in ``pending`` (emptied), each block's weights written
        and the block checkpointed, in order."""
        results: dict[str, LayerResult] = {}
        for index, finish, digest in pending:
            done = finish()
            if checkpoint is not None:
                checkpoint.save(index, list(done.values()), digest)
            results.update(self._in_place(done))
        pending.clear()
        return results

    def _block(self, block, inputs, data, groups, budgets, dense, pruned, *, first, final,
               curves):
        """Solve one block's groups from its input streams; advance the streams past it
        (unless ``final``: the last block's outputs are not needed). Returns a function that
        gives the block's results once they are in (see :meth:`_defer`)."""
        runner = _Runner(block, inputs, pruned)
        done: dict[str, LayerResult] = {}
        diagonal = self.kind == "diagonal"
        if self.kind == "none":
            self._solve(groups, budgets, {t.name: Moments(None) for g in groups for t in g},
                        done, curves)
            return lambda: done
        blocks = self.layers.column_blocks
        if not self.sequential:
            moments = collect(runner, data, groups, self.device, self.discovery,
                              diagonal=diagonal, blocks=blocks)
            if not final:
                self._advance(block, inputs, dense, pruned, {})
            if self._defer(curves):
                return self._submit(groups, budgets, moments)
            self._solve(groups, budgets, moments, done, curves)
            return lambda: done
        if diagonal:  # one stream, the pruned one: each group sees the block as pruned so far
            for group in groups:
                moments = collect(runner, data, [group], self.device, self.discovery,
                                  diagonal=True)
                self._solve([group], budgets, moments, done, curves)
            if not final:
                self._advance(block, inputs, dense, pruned, done)
            return lambda: done
        paired = groups[1:] if first else groups
        runs = dense_runs(paired, dense[0].shape[-1], self.dense_row_widths) if paired else []
        rows: dict[int, DenseSide] = {}
        advanced = len(runs) == 1
        if advanced:
            rows = self._dense_rows(block, inputs, data, runs[0], dense, {}, advance=not final)
        starts = {id(run[0]): run for run in runs}
        for group in groups:
            if not advanced and id(group) in starts:
                rows.update(self._dense_rows(block, inputs, data, starts[id(group)], dense,
                                             done))
            side = rows.pop(id(group), None)
            moments = collect(runner, data, [group], self.device, self.discovery,
                              dense=None if side is None else [side], blocks=blocks)
            self._solve([group], budgets, moments, done, curves)
            del moments, side
        if not final:
            self._advance(block, inputs, dense, pruned, done, dense_done=advanced)
        return lambda: done

    def _dense_rows(self, block, inputs, data, run, dense, done, *,
                    advance: bool = False) -> dict[int, DenseSide]:
        """The dense sides of the groups of ``run``, by ``id`` of the group, from one pass of
        the dense block over ``X_0`` (with ``advance``: the whole block, its outputs replacing
        ``X_0``)."""
        runner = _Runner(block, inputs, dense, dense if advance else None)
        with self._dense(done):
            found = capture_dense(runner, data, run, self.device, self.discovery,
                                  stop=not advance, blocks=self.layers.column_blocks)
        return {id(group): side for group, side in zip(run, found, strict=True)}

    @torch.no_grad()
    def _advance(self, block, inputs, dense, pruned, done, *, dense_done: bool = False) -> None:
        """The streams past ``block``, which holds the weights of ``done``: ``X_0`` through
        the dense block (unless ``dense_done``), then ``X`` through the block as it is; the one
        stream of sequential diagonal statistics through the block as it is."""
        if self.sequential and not self.paired:
            for i in range(len(pruned)):
                pruned[i] = run_block(block, inputs, i, pruned[i])
            return
        if not dense_done:
            with self._dense(done):
                for i in range(len(dense)):
                    dense[i] = run_block(block, inputs, i, dense[i])
        if pruned is dense:
            return
        for i in range(len(pruned)):
            pruned[i] = run_block(block, inputs, i, pruned[i])

    def _suffix(self, budgets, results, curves) -> dict[str, LayerResult]:
        """The targets after the stack, by whole-model passes (see the module docstring)."""
        done: dict[str, LayerResult] = {}
        if not self.suffix:
            return done
        for group in self.suffix:
            for t in group:
                self.rollback.capture(t.module)
        if self.kind == "none":
            moments = {t.name: Moments(None) for g in self.suffix for t in g}
            self._solve(self.suffix, budgets, moments, done, curves)
            return self._in_place(done)
        if not self.sequential:
            with self._dense(results):
                moments = self._collect(self.suffix, None)
            self._solve(self.suffix, budgets, moments, done, curves)
            return self._in_place(done)
        for group in self.suffix:
            earlier = {**results, **done}
            reference = partial(self._dense, earlier) if earlier and self.paired else None
            moments = self._collect([group], reference)
            self._solve([group], budgets, moments, done, curves)
        return self._in_place(done)

    def _collect(self, groups, reference) -> dict[str, Moments]:
        """Whole-model statistics of ``groups`` (where the model is), moved to the device."""
        self.passes += 1
        found = collect(self.model, self.calibration, groups, self.home, self.discovery,
                        reference, diagonal=self.kind == "diagonal",
                        blocks=self.layers.column_blocks)
        return _moved(found, self.device)

    def _submit(self, groups, budgets, moments):
        """Send the layers of ``groups`` to the executor; the function returned waits for
        their solutions and writes their weights."""
        members = [t for group in groups for t in group]
        pending = self.layers.submit_all([(t, budgets[t.name], moments[t.name])
                                          for t in members])

        def finish() -> dict[str, LayerResult]:
            done = {}
            for t, result in zip(members, pending(None), strict=True):
                with torch.no_grad():
                    t.module.weight.copy_(result.weight)
                done[t.name] = result
            return done

        return finish

    def _solve(self, groups, budgets, moments, done, curves) -> None:
        """Solve the layers of ``groups`` together and write their weights (the memory freed
        since the last solve given back first: a solve is block mode's peak)."""
        give_back_freed_memory()
        members = [t for group in groups for t in group]
        solved = self.layers.solve_all([(t, budgets[t.name], moments[t.name]) for t in members])
        if curves is not None:
            family, grid, found = curves
            layers = [(t, moments[t.name]) for t in members]
            found.update(zip([t.name for t in members],
                             self.layers.curve_all(layers, family, grid), strict=True))
        for t, result in zip(members, solved, strict=True):
            with torch.no_grad():
                t.module.weight.copy_(result.weight)
            done[t.name] = result

    def _in_place(self, done: dict[str, LayerResult]) -> dict[str, LayerResult]:
        """``done`` with each weight the layer's own (which holds it): no second copy of the
        pruned model; masks where the model is."""
        modules = {t.name: t.module for t in self.targets}
        return {
            name: dataclasses.replace(r, weight=modules[name].weight, bits=r.bits.to(self.home))
            for name, r in done.items()
        }

    @contextmanager
    def _dense(self, done: Mapping[str, LayerResult]) -> Iterator[None]:
        """The dense weights back in the layers of ``done`` for the duration; then their
        pruned weights (from the results, or copied aside when the results share them)."""
        modules = [(t.module, done[t.name].weight) for t in self.targets if t.name in done]
        with torch.no_grad():
            pruned = [w.clone() if w is m.weight else w for m, w in modules]
            for m, _ in modules:
                m.weight.copy_(self.rollback.value(m.weight))
        try:
            yield
        finally:
            with torch.no_grad():
                for (m, _), weight in zip(modules, pruned, strict=True):
                    m.weight.copy_(weight)
