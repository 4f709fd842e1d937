"""What a run's statistics and solves hold in memory, checked before any work.

A layer whose statistics do not fit (a convolution whose patches are 65,536 wide asks for a
34 GB float64 ``H``) used to fail deep in a run, with the allocator's own error, after the
calibration pass had started. :func:`check_memory` estimates, once the targets are chosen and
before the first statistics pass, the peak of what the run's statistics and layer solves hold
on its device and refuses a run that cannot fit, in one line naming the layer, the size and the
ways out: leave the layer dense (``ignore=``), a method that reads no statistics (magnitude) or
only their diagonal (Wanda), or block-diagonal statistics (``h_block=``, :func:`column_plan`).

What it counts, in bytes, for a layer of ``o`` rows per convolution group (``g`` groups) whose
``H`` has column blocks of widths ``b_j`` (one block, its whole input, without ``h_block``):

- statistics, per input group (its members share them): the float64 ``H``, ``8 g sum b_j^2``
  (Wanda: its diagonal; magnitude: none); paired (``sequential=True``, every group but the
  first): ``C = X^T X_0``, ``8 g sum b_j^2``, or, for a group that pairs with its outputs
  (:func:`~l0prune.model.statistics.pairs_outputs`), ``G`` per member, ``8 g o cols``.
- while a group's statistics are taken: one batch's rows (a convolution's patches, two float32
  copies while unfolded; rows counted on the discovery batch) and, paired, the dense side kept
  for every batch (counted when the calibration data has a length).
- a layer's solves: :data:`WORKING`, measured per method: what a solved block's problem keeps
  (its float32 ``H``, factorisations) per ``b^2`` and per ``o b``, for every block, plus the
  peak of one solve above that for the widest block.

How long each part lives follows the pipelines: the whole-model path keeps every layer's
statistics to the end of the run (a search reuses them) and a search every layer's problems;
block by block, the statistics of one block's layers (``sequential=True``: of one input group)
at a time. The available memory is the device's free memory (``torch.cuda.mem_get_info``) or,
on the CPU, ``MemAvailable`` of ``/proc/meminfo`` and the cgroup's limit less its usage; where
neither can be read (not Linux) nothing is checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from l0prune.model.statistics import Discovery, column_blocks, input_groups, pairs_outputs
from l0prune.model.targets import Target
from solvers import NM, Budget, Structured

from .allocation import layer_family

__all__ = ["WORKING", "Cost", "available_memory", "check_memory", "column_plan", "estimate"]


@dataclass(frozen=True)
class Cost:
    """A method's working memory on one block of ``o x b`` (bytes, measured).

    Attributes:
        kept: what a solved block's problem keeps while the layer's problems live, per
            ``b^2`` and per ``o b``.
        peak: the most one solve holds, those included, per ``b^2`` and per ``o b``.
    """

    kept: tuple[float, float]
    peak: tuple[float, float]

    def layer(self, out: int, widths: Sequence[int]) -> tuple[float, float]:
        """``(kept, extra)`` of a group of blocks: what all keep, and the peak's excess for
        the widest."""
        kept = sum(self.kept[0] * b * b + self.kept[1] * out * b for b in widths)
        widest = max(widths)
        extra = ((self.peak[0] - self.kept[0]) * widest * widest
                 + (self.peak[1] - self.kept[1]) * out * widest)
        return kept, extra


#: Working memory per method, measured on one thread by ``l0prune bench wide --working``
#: (the peak resident memory of a solve above its float64 statistics, and what stays while its
#: problem lives) on layers of 2,048 and 4,096 inputs with 128 and 4,096 rows, each figure the
#: larger of two such measurements; a method not listed counts as ADMM (the largest of those
#: that read ``H``).
WORKING: dict[str, Cost] = {
    "admm": Cost(kept=(20.0, 31.0), peak=(45.0, 72.0)),
    "iht": Cost(kept=(23.0, 150.0), peak=(43.0, 160.0)),
    "obs": Cost(kept=(8.0, 23.0), peak=(30.0, 38.0)),
    "wanda": Cost(kept=(0.0, 9.0), peak=(0.0, 23.0)),
    "magnitude": Cost(kept=(0.0, 9.0), peak=(0.0, 17.0)),
}


def available_memory(device: torch.device) -> int | None:
    """Bytes the run can still allocate on ``device``, or ``None`` where it cannot be read.

    Example:
        >>> available_memory(torch.device("cpu")) is None or available_memory(
        ...     torch.device("cpu")) > 0
        True
    """
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = [n for n in (_meminfo(), _cgroup_room()) if n is not None]
    return min(found) if found else None


def _meminfo() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_room() -> int | None:
    """The cgroup's memory limit less its usage (v2, then v1), or ``None`` without a limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap, used = Path(limit).read_text().strip(), Path(usage).read_text().strip()
        except OSError:
            continue
        if cap.isdigit() and used.isdigit() and int(cap) < 1 << 60:
            return max(int(cap) - int(used), 0)
    return None


def _unit(target: Target, family: Budget) -> int:
    """Columns a column block must not split: a convolution's channel, and the budget's
    counting set (``m`` inputs of N:M, a structured group)."""
    budget = layer_family(target, family)
    if isinstance(budget, NM):
        size = budget.m
    elif isinstance(budget, Structured):
        size = budget.group
    else:
        size = 1
    return math.lcm(target.kernel, size)


def column_plan(targets: Sequence[Target], family: Budget, width: int | None,
                statistics: str) -> dict[str, tuple[int, ...]]:
    """The column blocks of the targets that take block-diagonal statistics: with full
    statistics, each target wider than ``width`` columns (per convolution group), in blocks of
    at most ``width`` (:func:`~l0prune.model.statistics.column_blocks`: whole channels, whole
    groups of the budget).

    Args:
        targets: the run's targets.
        family: the run's budget (family).
        width: the most columns of a block (``h_block``), or ``None``: full statistics.
        statistics: what the method reads (``"full"``, ``"diagonal"``, ``"none"``).

    Returns:
        The bounds by target name (targets with one block are left out).

    Example:
        >>> from torch import nn
        >>> from solvers import Unstructured
        >>> column_plan([Target("c", nn.Conv1d(8, 4, 3))], Unstructured(), 12, "full")
        {'c': (0, 12, 24)}
    """
    if width is None or statistics != "full":
        return {}
    plan = {}
    for t in targets:
        bounds = column_blocks(t.shape[1], width, _unit(t, family))
        if len(bounds) > 2:
            plan[t.name] = bounds
    return plan


@dataclass
class _Group:
    """One input group's figures (bytes)."""

    targets: list[Target]
    statistics: float  # held from its pass until it is freed
    taking: float  # during its pass: one batch's rows, the dense side
    kept: float  # its members' problems, all blocks
    extra: float  # the peak of one solve above that
    what: str  # its statistics, in words


def _widths(bounds: tuple[int, ...] | None, cols: int) -> list[int]:
    return [cols] if bounds is None else [b - a for a, b in zip(bounds[:-1], bounds[1:],
                                                                 strict=True)]


def _group(group: list[Target], statistics: str, paired: bool, cost: Cost,
           bounds: tuple[int, ...] | None, discovery: Discovery, batches: int) -> _Group:
    first = group[0]
    g, cols = first.groups, first.shape[1]
    widths = _widths(bounds, cols)
    square = sum(b * b for b in widths)
    rows = discovery.rows.get(first.name, 0)
    held = taking = 0.0
    if statistics == "full":
        held = 8.0 * g * square
        if paired and bounds is not None:
            held *= 2
            taking = 4.0 * rows * batches * g * cols / first.kernel  # the inputs as received
        elif paired and pairs_outputs(group):
            held += sum(8.0 * g * t.shape[0] * cols for t in group)
            taking = 4.0 * rows * batches * g * sum(t.shape[0] for t in group)
        elif paired:
            held += 8.0 * g * cols * cols
            taking = 4.0 * rows * batches * g * cols
    elif statistics == "diagonal":
        held = 8.0 * g * cols
    if statistics != "none":
        taking += 8.0 * rows * g * max(widths)  # one batch unfolded: two float32 copies
    kept = extra = 0.0
    for t in group:
        if statistics == "full":
            k, e = cost.layer(t.shape[0], widths)
        else:
            k = cost.kept[1] * t.shape[0] * cols
            e = (cost.peak[1] - cost.kept[1]) * t.shape[0] * cols
        kept += g * k
        extra = max(extra, e)
    if statistics == "full":
        what = (f"a float64 H of {cols:,} x {cols:,}" if bounds is None else
                f"float64 H blocks of up to {max(widths):,} of its {cols:,} columns")
        what += ", paired" if paired else ""
    else:
        what = "none" if statistics == "none" else "the diagonal of H"
    return _Group(group, held, taking, kept, extra, what)


@dataclass
class Estimate:
    """The peak a run's statistics and solves hold, and the layer that needs most.

    Attributes:
        total: bytes at the peak.
        layer: the target needing most (its statistics and its solve).
        need: that target's bytes.
        what: its statistics, in words.
    """

    total: float
    layer: str
    need: float
    what: str


def estimate(targets: Sequence[Target], discovery: Discovery, *, statistics: str,
             method: str, sequential: bool, fixed: bool, stack=None, batches: int = 1,
             blocks: Mapping[str, tuple[int, ...]] | None = None) -> Estimate:
    """The memory a run holds at its peak (see the module docstring).

    Args:
        targets: the run's targets.
        discovery: the model's discovery (its rows per batch).
        statistics: what the method reads (``"full"``, ``"diagonal"``, ``"none"``).
        method: the method (:data:`WORKING`).
        sequential: the run's ``sequential``.
        fixed: whether the run prunes once (not the ``alpha`` search, which keeps every
            layer's problems).
        stack: the stack pruned block by block, or ``None`` for the whole-model path.
        batches: calibration batches (the dense side of paired statistics is kept for all).
        blocks: column blocks by target name (:func:`column_plan`).

    Returns:
        The :class:`Estimate`.

    Example:
        >>> from torch import nn
        >>> d = Discovery(["fc"], {"fc": 1}, {"fc": 0}, {"fc": 32})
        >>> e = estimate([Target("fc", nn.Linear(1024, 8))], d, statistics="full",
        ...              method="obs", sequential=False, fixed=True)
        >>> e.layer, round(e.need / 2**20)
        ('fc', 38)
    """
    cost = WORKING.get(method, WORKING["admm"])
    groups = input_groups(targets, discovery)
    paired = sequential and statistics == "full"
    found = [_group(group, statistics, paired and i > 0, cost, (blocks or {}).get(group[0].name),
                    discovery, batches) for i, group in enumerate(groups)]
    total = 0.0
    for held, level in _phases(found, sequential, stack):
        stats = sum(f.statistics for f in held)
        taking = max(f.taking for f in level)
        solving = sum(f.kept for f in level) + max(f.extra for f in level)
        if not fixed and stack is None:  # a search keeps every layer's problems
            solving = sum(f.kept for f in found) + max(f.extra for f in level)
        total = max(total, stats + max(taking, solving))
    worst = max(found, key=lambda f: f.statistics + f.taking + f.kept + f.extra)
    return Estimate(total, worst.targets[0].name,
                    worst.statistics + max(worst.taking, worst.kept + worst.extra), worst.what)


def _phases(found: list[_Group], sequential: bool, stack) -> list[tuple[list, list]]:
    """``(held, level)`` per stage of a run: the groups whose statistics are alive, and those
    solved together."""
    if stack is None:
        if sequential:
            return [(found[:i + 1], [f]) for i, f in enumerate(found)]
        return [(found, found)]
    if sequential:
        return [([f], [f]) for f in found]
    by_block: dict[int | None, list[_Group]] = {}
    for f in found:
        by_block.setdefault(stack.index(f.targets[0].module), []).append(f)
    return [(level, level) for level in by_block.values()]


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_memory(targets: Sequence[Target], discovery: Discovery, *, statistics: str,
                 method: str, sequential: bool, fixed: bool, family: Budget,
                 h_block: int | None, device: torch.device, stack=None, batches: int = 1,
                 available: int | None = None) -> None:
    """Refuse, before any work, a run whose statistics and solves cannot fit in memory.

    Args:
        targets, discovery, statistics, method, sequential, fixed, stack, batches: as for
            :func:`estimate`.
        family: the run's budget (family), for the column blocks.
        h_block: the run's ``h_block`` (:func:`column_plan`).
        device: where the statistics and solves go.
        available: bytes free there; default: :func:`available_memory`.

    Raises:
        ValueError: one line naming the layer that needs most, the sizes and the ways out.

    Example:
        >>> from torch import nn
        >>> from solvers import Unstructured
        >>> d = Discovery(["fc"], {"fc": 1}, {"fc": 0}, {"fc": 32})
        >>> check_memory([Target("fc", nn.Linear(1024, 8))], d, statistics="full",
        ...              method="obs", sequential=False, fixed=True, family=Unstructured(),
        ...              h_block=None, device=torch.device("cpu"), available=20 * 10**6)
        ...                                                   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: layer 'fc' needs about 40 MB for its statistics (a float64 H ... (--h-block 512)
    """
    if available is None:
        available = available_memory(device)
    if available is None:
        return

    def run_estimate(width):
        return estimate(targets, discovery, statistics=statistics, method=method,
                        sequential=sequential, fixed=fixed, stack=stack, batches=batches,
                        blocks=column_plan(targets, family, width, statistics))

    found = run_estimate(h_block)
    if found.total <= available:
        return
    ways = [f"leave it dense with ignore=[{found.layer!r}] (--ignore {found.layer})",
            "use a method that reads no statistics (magnitude) or only their diagonal (wanda)"]
    width = _fitting_width(targets, run_estimate, available, h_block) \
        if statistics == "full" else None
    if width is not None:
        ways.append(f"take block-diagonal statistics with h_block={width} (--h-block {width})")
    raise ValueError(
        f"layer {found.layer!r} needs about {_gigabytes(found.need)} for its statistics "
        f"({found.what}) and its {method} solve, the run about {_gigabytes(found.total)} in "
        f"all, but {_gigabytes(available)} are free on {device}: {', '.join(ways[:-1])}, or "
        f"{ways[-1]}"
    )


def _fitting_width(targets: Sequence[Target], run_estimate, available: int,
                   h_block: int | None) -> int | None:
    """The widest power-of-two ``h_block`` (at least 64, below the widest layer and below the
    run's own) whose estimate fits, or ``None``."""
    widest = max(t.shape[1] for t in targets)
    if h_block is not None:
        widest = min(widest, h_block)
    width = 1 << max((widest - 1).bit_length() - 1, 0)
    while width >= 64:
        if run_estimate(width).total <= available:
            return width
        width //= 2
    return None
