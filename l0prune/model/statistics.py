"""Layer input statistics: ``H = X^T X / N`` streamed through forward pre-hooks.

The activations are never stored: each hook turns the layer's input into rows (patches for a
convolution, real tokens only when the batch has an ``attention_mask``) and adds ``X^T X`` to a
float64 sum on the model's device. One pass over the calibration data fills the sums of every
layer hooked.

Layers that read the same input tensor in the same way (a transformer's query, key and value
projections) form one *input group*: one sum, filled once per forward, shared by all of them.
:func:`discover` finds the groups and the order the layers run in from one calibration batch.

*Paired* statistics (for sequential pruning) pair the rows ``X`` a layer sees with earlier layers
pruned with what the dense model gives it, batch by batch: the dense inputs ``X_0`` or the dense
outputs ``Y_0 = X_0 W^T``, whichever is narrower. A group whose members have fewer outputs in
all than it has inputs (a transformer's MLP down projection: 1 hidden width of outputs against
2.7-4 of inputs; a convolution, whose patches are its channels times its taps wide) keeps ``Y_0``
per member and sums ``G = Y_0^T X`` (``out x in``); any other
group keeps ``X_0`` and sums ``C = X^T X_0`` (``in x in``, shared by its members, turned into
``G = W C^T`` per member by :meth:`Moments.dense_cross`). Either way the sequential problem
(:meth:`solvers.LayerProblem.from_moments`) needs ``G`` and the dense output's energy
``||Y_0||^2``, which the dense pass gives for free from each member's output: the ``in x in``
moment of ``X_0`` is never formed. The dense side comes from a reference pass per batch
(``reference``), or was captured before by :func:`capture_dense` (one dense pass for several
groups: block by block, the dense block does not change while the block is pruned).

A method that reads only the diagonal of ``H`` (Wanda: the inputs' squared norms; the solver
registry says so, :func:`solvers.method_info`) gets *diagonal* statistics: ``sum_rows x_j^2 / N``
per input, ``in`` numbers a layer instead of ``in^2`` (``collect(..., diagonal=True)``); a method
that reads none (magnitude) gets no pass at all.

*Block-diagonal* statistics (``collect(..., blocks=...)``) keep, for a layer too wide for its
full ``H``, only the diagonal blocks of ``H`` over consecutive column blocks
(:func:`column_blocks`: whole input features, for a convolution whole input channels with all
their taps): a :class:`BlockDiagonal`. Each block's ``X_b^T X_b`` is summed from the patches of
its own channels, unfolded one block at a time, so neither the full ``H`` nor the full patches
exist. Paired, each block pairs with its own part of the dense output, ``Y_0b = X_0b W_b^T``:
the block's ``C_b = X_b^T X_0b / N`` and ``||Y_0b||^2 / N``, from the dense inputs kept as the
layer received them (not unfolded), so that each block is a sequential problem of its own.

Precision: each product is taken in float32 (the activations' precision; float64 activations
stay float64) over at most :data:`PRODUCT_ROWS` rows at a time, and the products are summed in
float64. A float32 sum of ``k`` products errs by at most ``k u sum_i |x_i y_i|``
(``u = 2^-24``), so an entry of ``H`` is within ``PRODUCT_ROWS * u * sqrt(H_ii H_jj)`` of the
float64 sum (Cauchy-Schwarz), about 1e-7 relative in practice; float32 matrix products run about
twice as fast as float64 ones on a CPU, and the statistics were most of a sequential run's time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn

from l0prune.data.batches import attention_mask, check_data, forward, to_device

from .input_check import explained
from .targets import Target, prunable_layers, select_targets

__all__ = ["GRAM_BLOCK", "PRODUCT_ROWS", "BlockDiagonal", "DenseSide", "Discovery", "Moments",
           "add_gram", "capture_dense", "collect", "column_blocks", "dense_width", "discover",
           "input_groups", "mirrored", "pairs_outputs", "row_products", "second_moments"]

#: Rows per float32 product before it is added to the float64 sums (see the module docstring).
PRODUCT_ROWS = 1024

#: Columns per block of the Gram products ``X^T X`` (:func:`add_gram`): the blocks under the
#: diagonal are mirrored, not computed.
GRAM_BLOCK = 128


class _Stop(Exception):
    """Raised by a hook to end a forward pass once every hooked layer has seen its input."""


def _layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


@dataclass
class Discovery:
    """What one forward pass on a calibration batch shows about the prunable layers.

    Attributes:
        order: prunable layer names in the order they first run.
        calls: how many times each ran in that pass.
        source: per layer, a token naming its input tensor (equal tokens: the same tensor).
        rows: per layer, the rows of its first call (:meth:`Target.rows
            <l0prune.model.targets.Target.rows>`: output positions of a convolution, tokens
            with padding of a linear layer): what one batch's statistics handle at a time.

    Example: see :func:`discover`.
    """

    order: list[str]
    calls: dict[str, int]
    source: dict[str, int]
    rows: dict[str, int] = field(default_factory=dict)


@torch.no_grad()
def discover(model: nn.Module, batch, device: torch.device) -> Discovery:
    """Run ``model`` on one batch and record which prunable layers run, in what order, on what.

    Args:
        model: the model (in the mode the statistics will be taken in).
        batch: one calibration batch.
        device: where the batch goes.

    Returns:
        A :class:`Discovery`.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> discover(model, torch.randn(3, 4), torch.device("cpu")).order
        ['0', '2']
    """
    order: list[str] = []
    calls: dict[str, int] = {}
    inputs: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook_for(name):
        def hook(module, args, kwargs):
            if name not in calls:
                order.append(name)
                inputs[name] = _layer_input(args, kwargs)
            calls[name] = calls.get(name, 0) + 1

        return hook

    def count_rows(name, target):
        def hook(module, args, output):
            if name not in rows and isinstance(output, torch.Tensor):
                rows[name] = output.numel() // (target.shape[0] * target.groups)

        return hook

    layers = prunable_layers(model)
    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True)
               for n, m in layers.items()]
    handles += [m.register_forward_hook(count_rows(n, Target(n, m))) for n, m in layers.items()]
    try:
        with explained(model, "calibration"):
            forward(model, batch, device)
    finally:
        for handle in handles:
            handle.remove()
    tokens: dict[int, int] = {}
    source = {n: tokens.setdefault(id(x), len(tokens)) for n, x in inputs.items()}
    return Discovery(order, calls, source, rows)


def input_groups(targets: Sequence[Target], discovery: Discovery) -> list[list[Target]]:
    """``targets`` grouped by shared input, groups in the order their first member runs.

    Args:
        targets: the layers.
        discovery: the model's :class:`Discovery`.

    Returns:
        The groups, each a list of targets in the order they run.

    Example:
        >>> d = Discovery(["q", "k", "o"], {"q": 1, "k": 1, "o": 1}, {"q": 0, "k": 0, "o": 1})
        >>> ts = [Target(n, nn.Linear(4, 4)) for n in ("q", "k", "o")]
        >>> [[t.name for t in g] for g in input_groups(ts, d)]
        [['q', 'k'], ['o']]
    """
    position = {n: i for i, n in enumerate(discovery.order)}
    groups: dict[tuple, list[Target]] = {}
    for t in sorted(targets, key=lambda t: position[t.name]):
        groups.setdefault((discovery.source[t.name], t.signature), []).append(t)
    return list(groups.values())


def column_blocks(cols: int, width: int, unit: int = 1) -> tuple[int, ...]:
    """The bounds of the column blocks of a block-diagonal ``H``: ``cols`` columns in the
    fewest blocks of at most ``width`` columns, each a whole number of ``unit`` columns, as
    even as possible (a block of one unit where ``width < unit``).

    ``unit`` keeps together what must not be split: a convolution's input channel (its taps), a
    budget's group of ``m`` inputs (N:M) or of whole features (structured).

    Args:
        cols: the columns of one problem (a multiple of ``unit``).
        width: the most columns of a block, ``>= 1``.
        unit: columns per indivisible unit.

    Returns:
        ``(0, b_1, ..., cols)``: block ``j`` is columns ``bounds[j]:bounds[j + 1]``.

    Example:
        >>> column_blocks(10, 4), column_blocks(8, 8), column_blocks(6 * 64, 128, unit=64)
        ((0, 4, 7, 10), (0, 8), (0, 128, 256, 384))
    """
    units = cols // unit
    per_block = max(width // unit, 1)
    count = -(-units // per_block)
    sizes = [units // count + (j < units % count) for j in range(count)]
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size * unit)
    return tuple(bounds)


@dataclass
class BlockDiagonal:
    """A ``(groups, cols, cols)`` matrix that is block-diagonal over column blocks, kept as its
    diagonal blocks (see the module docstring).

    Attributes:
        bounds: the blocks' column bounds (:func:`column_blocks`).
        blocks: block ``j`` of each convolution group, ``(groups, b_j, b_j)``, float64.

    Example:
        >>> H = BlockDiagonal((0, 1, 3), [torch.ones(1, 1, 1), 2 * torch.ones(1, 2, 2)])
        >>> H.dense()[0].tolist()
        [[1.0, 0.0, 0.0], [0.0, 2.0, 2.0], [0.0, 2.0, 2.0]]
    """

    bounds: tuple[int, ...]
    blocks: list[torch.Tensor]

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Each block's ``(start, stop)`` columns."""
        return list(zip(self.bounds[:-1], self.bounds[1:], strict=True))

    def to(self, device) -> BlockDiagonal:
        """The blocks on ``device``."""
        return BlockDiagonal(self.bounds, [b.to(device) for b in self.blocks])

    def cpu(self) -> BlockDiagonal:
        """The blocks on the CPU."""
        return self.to("cpu")

    def dense(self) -> torch.Tensor:
        """The whole ``(groups, cols, cols)`` matrix, zeros off the blocks (small layers,
        tests)."""
        return torch.stack([torch.block_diag(*(b[g] for b in self.blocks))
                            for g in range(self.blocks[0].shape[0])])


@dataclass
class Moments:
    """One layer's statistics, float64, per convolution group.

    Attributes:
        H: ``X^T X / N`` of the rows the layer sees, ``(groups, cols, cols)``; its diagonal
            alone, ``(groups, cols)``, for diagonal statistics; its diagonal blocks, a
            :class:`BlockDiagonal`, for block-diagonal ones; ``None`` when the method reads
            no statistics (the plain problem, ``H = I``). The members of an input group share
            it.
        cross: ``C = X^T X_0 / N`` against the dense model's rows ``X_0``, shared like ``H``
            (paired statistics of a group that keeps ``X_0``; see :func:`pairs_outputs`); a
            :class:`BlockDiagonal` of the blocks' ``C_b`` for block-diagonal ones.
        outputs: ``G = Y_0^T X / N`` for the dense outputs ``Y_0 = X_0 W^T``, ``(groups, out,
            cols)`` (paired statistics of a group that keeps ``Y_0``).
        energy: ``||Y_0||^2 / N``, ``(groups,)`` (paired statistics); per column block,
            ``(groups, blocks)``, the energy of the block's own part ``Y_0b`` of the output,
            for block-diagonal ones.

    Example: see :func:`collect`.
    """

    H: torch.Tensor | BlockDiagonal | None
    cross: torch.Tensor | BlockDiagonal | None = None
    outputs: torch.Tensor | None = None
    energy: torch.Tensor | None = None

    def dense_cross(self, W: torch.Tensor) -> torch.Tensor | None:
        """``G = Y_0^T X / N = W C^T`` per group for the dense weight ``W`` ``(groups, out,
        cols)``, float64 (block-diagonal: each block's ``Y_0b^T X_b / N = W_b C_b^T``, side by
        side); ``None`` for unpaired statistics."""
        if self.outputs is not None:
            return self.outputs
        if self.cross is None:
            return None
        if isinstance(self.cross, BlockDiagonal):
            return torch.cat([W[..., a:b].to(c) @ c.transpose(1, 2)
                              for (a, b), c in zip(self.cross.spans, self.cross.blocks,
                                                   strict=True)], dim=2)
        return W.to(self.cross) @ self.cross.transpose(1, 2)


def row_products(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``X^T Y`` per group for rows ``(groups, n, a)`` and ``(groups, n, b)``: float32 products
    (float64 inputs: float64) of at most :data:`PRODUCT_ROWS` rows at a time, summed in float64.

    Args:
        X: rows, ``(groups, n, a)``.
        Y: their twins, ``(groups, n, b)``.

    Returns:
        ``(groups, a, b)``, float64.

    Example:
        >>> X = torch.ones(1, 3, 2)
        >>> row_products(X, 2 * X).tolist()
        [[[6.0, 6.0], [6.0, 6.0]]]
    """
    dtype = torch.promote_types(torch.promote_types(X.dtype, Y.dtype), torch.float32)
    X, Y = X.to(dtype), Y.to(dtype)
    total = torch.zeros(X.shape[0], X.shape[2], Y.shape[2], dtype=torch.float64,
                        device=X.device)
    for start in range(0, X.shape[1], PRODUCT_ROWS):
        part = X[:, start:start + PRODUCT_ROWS]
        total += torch.bmm(part.transpose(1, 2), Y[:, start:start + PRODUCT_ROWS])
    return total


def add_gram(total: torch.Tensor, X: torch.Tensor) -> None:
    """Add ``X^T X`` per group (rows ``(groups, n, cols)``) to the float64 ``total`` as
    :func:`row_products` would, but only its block rows' parts on and above the diagonal, in
    blocks of :data:`GRAM_BLOCK` columns: ``(b + 1) / 2b`` of the products for ``b`` blocks
    (13/24 for a 1536-wide MLP input). :func:`mirrored` fills in the rest once, at the end.

    Args:
        total: ``(groups, cols, cols)``, float64.
        X: rows, ``(groups, n, cols)``.

    Example:
        >>> X = torch.randn(1, 50, 2 * GRAM_BLOCK + 3, dtype=torch.float64)
        >>> total = torch.zeros(1, X.shape[2], X.shape[2], dtype=torch.float64)
        >>> add_gram(total, X)
        >>> torch.allclose(mirrored(total), X.mT @ X)
        True
    """
    X = X.to(torch.promote_types(X.dtype, torch.float32))
    cols = X.shape[2]
    for start in range(0, X.shape[1], PRODUCT_ROWS):
        part = X[:, start:start + PRODUCT_ROWS]
        for i in range(0, cols, GRAM_BLOCK):
            total[:, i:i + GRAM_BLOCK, i:] += torch.bmm(
                part[:, :, i:i + GRAM_BLOCK].transpose(1, 2), part[:, :, i:])


def mirrored(total: torch.Tensor) -> torch.Tensor:
    """The symmetric matrices whose block rows on and above the diagonal are ``total``'s
    (:func:`add_gram`), in place.

    Args:
        total: ``(groups, cols, cols)``.

    Returns:
        ``total``, its blocks under the diagonal the transposes of those above.
    """
    cols = total.shape[2]
    for i in range(GRAM_BLOCK, cols, GRAM_BLOCK):
        total[:, i:i + GRAM_BLOCK, :i] = total[:, :i, i:i + GRAM_BLOCK].transpose(1, 2)
    return total


def pairs_outputs(group: Sequence[Target]) -> bool:
    """Whether a group's paired statistics keep the dense outputs ``Y_0`` (``G = Y_0^T X``)
    rather than the dense inputs ``X_0`` (``C = X^T X_0``): a group whose members have fewer
    outputs in all than it has inputs (narrower rows to keep, fewer products to sum); for a
    convolution, per group, against its patches' width (channels times taps).

    Args:
        group: an input group.

    Returns:
        ``True`` for the dense outputs.

    Example:
        >>> pairs_outputs([Target("down", nn.Linear(16, 4))])
        True
        >>> pairs_outputs([Target(n, nn.Linear(4, 4)) for n in "qkv"])
        False
        >>> pairs_outputs([Target("conv", nn.Conv1d(128, 16, 64))])
        True
    """
    return sum(t.shape[0] for t in group) < group[0].shape[1]


def dense_width(group: Sequence[Target]) -> int:
    """Values a group's :class:`DenseSide` keeps per row: the members' outputs in all
    (:func:`pairs_outputs`), else the inputs' width (a convolution's patch width).

    Example:
        >>> dense_width([Target("down", nn.Linear(16, 4))])
        4
    """
    first = group[0]
    if pairs_outputs(group):
        return sum(t.shape[0] for t in group) * first.groups
    return first.shape[1] * first.groups


def _grouped(X: torch.Tensor, groups: int, device: torch.device) -> torch.Tensor:
    """Rows ``(n, groups * cols)`` as ``(groups, n, cols)`` on ``device``, in float32 at least
    (float64 stays float64)."""
    X = X.to(device=device, dtype=torch.promote_types(X.dtype, torch.float32))
    return X.reshape(X.shape[0], groups, X.shape[1] // groups).transpose(0, 1)


def _features(span: tuple[int, int], target: Target) -> tuple[int, int]:
    """A column block's input features (channels of a convolution)."""
    return span[0] // target.kernel, span[1] // target.kernel


class DenseSide:
    """What an input group's paired statistics take from the dense model, call by call.

    Filled by hooks during a dense pass (:meth:`hooks`), consumed in the same order by the
    pass of the model as it is (:func:`collect`): per call, the rows ``X_0`` (a group that keeps
    the inputs) or each member's ``Y_0`` (one that keeps the outputs, :func:`pairs_outputs`),
    and each member's ``||Y_0||^2`` summed over the pass. With column ``bounds``
    (block-diagonal statistics) it keeps the input as the layer received it (and the batch's
    mask), unfolded block by block when used, and each member's energy per block, of its own
    part ``Y_0b = X_0b W_b^T`` of the output.

    Args:
        group: the input group.
        device: where rows and sums go.
        bounds: the column blocks of block-diagonal statistics (:func:`column_blocks`), or
            ``None``.

    Attributes:
        keeps_outputs: :func:`pairs_outputs` of the group (never with ``bounds``).
        inputs: ``X_0`` rows per call (``(n, groups * cols)``, the activations' dtype); with
            ``bounds``, ``(input, mask)`` per call.
        outputs: per member, ``Y_0`` rows per call (``(n, out)``).
        energy: per member, ``||Y_0||^2`` per convolution group, float64 (``(groups,
            blocks)`` with ``bounds``).
    """

    def __init__(self, group: Sequence[Target], device: torch.device,
                 bounds: tuple[int, ...] | None = None):
        self.group, self.device, self.bounds = list(group), device, bounds
        self.keeps_outputs = bounds is None and pairs_outputs(group)
        self.inputs: list = []
        self.outputs: list[list[torch.Tensor]] = [[] for _ in group]
        shape = (group[0].groups,) if bounds is None else (group[0].groups, len(bounds) - 1)
        self.energy = [torch.zeros(shape, dtype=torch.float64, device=device) for _ in group]

    def hooks(self, state: dict) -> list:
        """Register the dense pass's hooks (``state["mask"]``: the batch's attention mask; they
        act while ``state.get("dense", True)``); returns their handles."""

        def keep_inputs(module, args, kwargs):
            if not state.get("dense", True):
                return
            x = _layer_input(args, kwargs)
            if self.bounds is not None:
                self.inputs.append((x.to(self.device), state["mask"]))
                self._block_energy(x, state["mask"])
                return
            rows = self.group[0].rows(x, state["mask"])
            self.inputs.append(rows.to(self.device))

        def keep_outputs(i: int, t: Target):
            def hook(module, args, kwargs, output):
                if not state.get("dense", True):
                    return
                rows = t.output_rows(output, state["mask"]).to(self.device)
                power = rows.square().sum(0, dtype=torch.float64)
                self.energy[i] += power.reshape(t.groups, -1).sum(1)
                if self.keeps_outputs:
                    self.outputs[i].append(rows)

            return hook

        handles = [] if self.keeps_outputs else [
            self.group[0].module.register_forward_pre_hook(keep_inputs, with_kwargs=True)]
        if self.bounds is None:
            handles += [t.module.register_forward_hook(keep_outputs(i, t), with_kwargs=True)
                        for i, t in enumerate(self.group)]
        return handles

    def _block_energy(self, x: torch.Tensor, mask) -> None:
        """Add each member's ``||X_0b W_b^T||^2`` per block (its weight is the dense one)."""
        first = self.group[0]
        spans = list(zip(self.bounds[:-1], self.bounds[1:], strict=True))
        for j, span in enumerate(spans):
            X0 = _grouped(first.rows(x, mask, _features(span, first)), first.groups,
                          self.device)
            for i, t in enumerate(self.group):
                W = t.matrix(t.module.weight.detach())[..., span[0]:span[1]].to(X0)
                Y = torch.bmm(X0, W.transpose(1, 2))
                self.energy[i][:, j] += Y.square().sum((1, 2), dtype=torch.float64)


class _Moment:
    """Running sums of one input group's row products (or, ``diagonal``, of its squared
    inputs; with column ``bounds``, of each block's), per convolution group, in float64."""

    def __init__(self, group: Sequence[Target], device: torch.device,
                 dense: DenseSide | None, diagonal: bool = False,
                 bounds: tuple[int, ...] | None = None):
        target = group[0]
        g, cols = target.groups, target.shape[1]
        self.target, self.dense, self.diagonal, self.bounds = target, dense, diagonal, bounds
        self.device = device
        self.cross = self.outputs = None
        self.rows = 0
        if bounds is not None:
            self.sum = [torch.zeros(g, b - a, b - a, dtype=torch.float64, device=device)
                        for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            if dense is not None:
                self.cross = [torch.zeros_like(block) for block in self.sum]
            return
        shape = (g, cols) if diagonal else (g, cols, cols)
        self.sum = torch.zeros(shape, dtype=torch.float64, device=device)
        if dense is not None and dense.keeps_outputs:
            self.outputs = [torch.zeros(g, t.shape[0], cols, dtype=torch.float64, device=device)
                            for t in group]
        elif dense is not None:
            self.cross = torch.zeros_like(self.sum)

    def grouped(self, X: torch.Tensor) -> torch.Tensor:
        """Rows ``(n, groups * cols)`` as ``(groups, n, cols)`` on the sums' device, in float32
        at least (float64 stays float64)."""
        return _grouped(X, self.target.groups, self.device)

    def add(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Add the rows of one call's input ``x`` (``mask``: the batch's attention mask)."""
        if self.bounds is not None:
            self._add_blocks(x, mask)
            return
        X = self.grouped(self.target.rows(x, mask))
        self.rows += X.shape[1]
        if self.diagonal:
            self.sum += (X * X).sum(dim=1, dtype=torch.float64)
            return
        add_gram(self.sum, X)
        if self.cross is not None:
            self.cross += row_products(X, self.grouped(self.dense.inputs.pop(0)))
        if self.outputs is not None:
            for total, rows in zip(self.outputs, self.dense.outputs, strict=True):
                total += row_products(self.grouped(rows.pop(0)), X)

    def _add_blocks(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Each block's sums from the patches of its own channels, one block at a time."""
        dense = None if self.cross is None else self.dense.inputs.pop(0)
        spans = zip(self.bounds[:-1], self.bounds[1:], strict=True)
        for j, span in enumerate(spans):
            features = _features(span, self.target)
            X = self.grouped(self.target.rows(x, mask, features))
            add_gram(self.sum[j], X)
            if dense is not None:
                X0 = self.grouped(self.target.rows(dense[0], dense[1], features))
                self.cross[j] += row_products(X, X0)
        self.rows += X.shape[1]

    def value(self, group: Sequence[Target]) -> dict[str, Moments]:
        if self.rows == 0:
            raise ValueError(
                f"no calibration input reached layer {self.target.name!r} "
                "(every position was padding?)"
            )
        cross = None
        if self.bounds is not None:
            H = BlockDiagonal(self.bounds, [mirrored(b).div_(self.rows) for b in self.sum])
            if self.cross is not None:
                cross = BlockDiagonal(self.bounds, [c.div_(self.rows) for c in self.cross])
        else:
            H = (self.sum if self.diagonal else mirrored(self.sum)).div_(self.rows)
            if self.cross is not None:
                cross = self.cross.div_(self.rows)
        if self.dense is None:
            shared = Moments(H)
            return {t.name: shared for t in group}
        return {
            t.name: Moments(H, cross, None if self.outputs is None else self.outputs[i] / self.rows,
                            self.dense.energy[i] / self.rows)
            for i, t in enumerate(group)
        }


def _bounds(group: Sequence[Target], blocks: Mapping[str, tuple[int, ...]] | None
            ) -> tuple[int, ...] | None:
    """The column blocks ``blocks`` gives a group (by any member), or ``None``."""
    found = {blocks[t.name] for t in group if t.name in blocks} if blocks else set()
    if len(found) > 1:
        raise ValueError(f"the layers {[t.name for t in group]} read one input and must share "
                         f"its column blocks, got {sorted(found)}")
    return found.pop() if found else None


def _stop(module, args, kwargs, output=None):
    raise _Stop


def _stop_after(groups: Sequence[Sequence[Target]], discovery: Discovery, *,
                inputs_only: bool = False):
    """The module after whose input (or output) a pass over ``groups`` can stop: the last
    member to run (with ``inputs_only``, the last of the groups' first members: the members
    of a group read one input, taken at the first), or ``None`` when some member runs more
    than once per forward (then every call counts)."""
    members = [t for group in groups for t in group]
    if not all(discovery.calls[t.name] == 1 for t in members):
        return None
    if inputs_only:
        members = [group[0] for group in groups]
    return max(members, key=lambda t: discovery.order.index(t.name)).module


def _run(model: nn.Module, batch, device: torch.device):
    """``model`` on ``batch``; ``None`` when a hook stopped the pass."""
    try:
        return forward(model, batch, device)
    except _Stop:
        return None


@torch.no_grad()
def capture_dense(
    model: nn.Module,
    data: Iterable,
    groups: Sequence[Sequence[Target]],
    device: torch.device,
    discovery: Discovery,
    *,
    stop: bool = True,
    blocks: Mapping[str, tuple[int, ...]] | None = None,
) -> list[DenseSide]:
    """One pass over ``data`` keeping each group's dense side (real tokens only), per batch.

    These are what :func:`collect` pairs with (its ``dense``): capturing several groups in one
    dense pass replaces a reference pass per group.

    Args:
        model: the model, in the state the rows describe (the dense one).
        data: calibration batches.
        groups: input groups (from :func:`input_groups`).
        device: where batches and rows go.
        discovery: the model's :class:`Discovery`.
        stop: end each forward once every group's last member has run (``False``: run it to
            the end, for a caller that also wants the outputs).
        blocks: the column blocks of the groups with block-diagonal statistics, by the name
            of a member (see :func:`collect`).

    Returns:
        A :class:`DenseSide` per group.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [torch.randn(16, 4), torch.randn(3, 4)]
        >>> d = discover(model, data[0], torch.device("cpu"))
        >>> groups = input_groups(select_targets(model, d.order), d)
        >>> sides = capture_dense(model, data, groups, torch.device("cpu"), d)
        >>> [[tuple(r.shape) for r in s.inputs] for s in sides]  # the head is no target
        [[(16, 4), (3, 4)]]
    """
    sides = [DenseSide(group, device, _bounds(group, blocks)) for group in groups]
    state: dict = {"mask": None}
    handles = [h for side in sides for h in side.hooks(state)]
    last = _stop_after(groups, discovery) if stop else None
    if last is not None:
        handles.append(last.register_forward_hook(_stop, with_kwargs=True))
    try:
        for batch in data:
            batch = to_device(batch, device)
            state["mask"] = attention_mask(batch)
            _run(model, batch, device)
    finally:
        for handle in handles:
            handle.remove()
    return sides


@torch.no_grad()
def collect(
    model: nn.Module,
    data: Iterable,
    groups: Sequence[Sequence[Target]],
    device: torch.device,
    discovery: Discovery,
    reference: Callable[[], AbstractContextManager] | None = None,
    dense: Sequence[DenseSide] | None = None,
    diagonal: bool = False,
    blocks: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, Moments]:
    """One pass over ``data`` filling the second moments of every group in ``groups``.

    With ``reference``, the statistics are paired: each batch first runs inside
    ``reference()`` (which puts the dense model's weights in place) to take each group's dense
    side (:class:`DenseSide`), then as the model is, to get its own rows ``X``. With ``dense``
    (from :func:`capture_dense`, one per group, consumed batch by batch) the statistics are
    paired with those and no reference pass runs.

    Each forward stops as soon as every group has seen its input (at its first member; a
    reference pass: once its last member has run), unless some layer runs more than once per
    forward (then all its calls count, so the forward runs to the end).

    Args:
        model: the model, in the state the statistics describe.
        data: calibration batches.
        groups: input groups (from :func:`input_groups`).
        device: where batches and sums live.
        discovery: the model's :class:`Discovery`.
        reference: a context manager factory for paired statistics, or ``None``.
        dense: each group's dense side (instead of ``reference``); emptied as it is used.
        diagonal: the diagonal of ``H`` only (``(groups, cols)`` per layer), unpaired.
        blocks: block-diagonal statistics for the groups named here (by any member): the
            column bounds of their blocks (:func:`column_blocks`); ``dense`` must come from
            :func:`capture_dense` with the same ``blocks``.

    Returns:
        :class:`Moments` per target name; members of a group share ``H`` (and ``cross``).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [torch.randn(16, 4)]
        >>> d = discover(model, data[0], torch.device("cpu"))
        >>> groups = input_groups(select_targets(model, d.order), d)
        >>> collect(model, data, groups, torch.device("cpu"), d)["0"].H.shape
        torch.Size([1, 4, 4])
    """
    if reference is not None and dense is not None:
        raise ValueError("give reference or dense, not both")
    if diagonal and (reference is not None or dense is not None):
        raise ValueError("diagonal statistics are not paired: give no reference or dense")
    if diagonal and blocks:
        raise ValueError("diagonal statistics have no blocks: give no blocks")
    if reference is not None:
        dense = [DenseSide(group, device, _bounds(group, blocks)) for group in groups]
    sides = dense if dense is not None else [None] * len(groups)
    moments = [_Moment(group, device, side, diagonal, _bounds(group, blocks))
               for group, side in zip(groups, sides, strict=True)]
    state: dict = {"mask": None, "dense": False}

    def accumulate(moment):
        def hook(module, args, kwargs):
            if not state["dense"]:
                moment.add(_layer_input(args, kwargs), state["mask"])

        return hook

    def stop_before(module, args, kwargs):
        if not state["dense"]:
            raise _Stop

    def stop_after(module, args, kwargs, output):
        if state["dense"]:
            raise _Stop

    handles = [m.target.module.register_forward_pre_hook(accumulate(m), with_kwargs=True)
               for m in moments]
    if reference is not None:
        handles += [h for side in sides for h in side.hooks(state)]
    first, last = (_stop_after(groups, discovery, inputs_only=True),
                   _stop_after(groups, discovery))
    if first is not None:
        handles += [first.register_forward_pre_hook(stop_before, with_kwargs=True),
                    last.register_forward_hook(stop_after, with_kwargs=True)]
    try:
        for batch in data:
            batch = to_device(batch, device)
            state["mask"] = attention_mask(batch)
            if reference is not None:
                state["dense"] = True
                with reference():
                    _run(model, batch, device)
                state["dense"] = False
            _run(model, batch, device)
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for moment, group in zip(moments, groups, strict=True):
        result.update(moment.value(group))
    return result


def second_moments(
    model: nn.Module,
    calibration: Iterable,
    targets: str | Sequence[str] | None = None,
    *,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """The input second moment ``H = X^T X / N`` of layers of ``model``, in one pass.

    The model is used as it is (call ``model.eval()`` first for inference statistics).

    Args:
        model: the model.
        calibration: re-iterable batches (see :mod:`l0prune.data.batches`).
        targets: layer name patterns (see :func:`~l0prune.model.targets.select_targets`); default:
            every prunable layer that runs except the output head.
        device: where batches and sums go; default: the model's device.

    Returns:
        ``H`` per layer name, float64: ``in x in`` (``cols x cols`` for a convolution), or
        ``(groups, cols, cols)`` for a grouped convolution.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> second_moments(model, [torch.randn(16, 4)])["0"].shape
        torch.Size([4, 4])
    """
    check_data(calibration, "calibration")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    discovery = discover(model, next(iter(calibration)), device)
    chosen = select_targets(model, discovery.order, targets)
    moments = collect(model, calibration, input_groups(chosen, discovery), device, discovery)
    return {t.name: moments[t.name].H[0] if t.groups == 1 else moments[t.name].H for t in chosen}
