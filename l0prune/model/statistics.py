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

Precision: each product is taken in float32 (the activations' precision; float64 activations
stay float64) over at most :data:`PRODUCT_ROWS` rows at a time, and the products are summed in
float64. A float32 sum of ``k`` products errs by at most ``k u sum_i |x_i y_i|``
(``u = 2^-24``), so an entry of ``H`` is within ``PRODUCT_ROWS * u * sqrt(H_ii H_jj)`` of the
float64 sum (Cauchy-Schwarz), about 1e-7 relative in practice; float32 matrix products run about
twice as fast as float64 ones on a CPU, and the statistics were most of a sequential run's time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from l0prune.data.batches import attention_mask, check_data, forward, to_device

from .input_check import explained
from .targets import Target, prunable_layers, select_targets

__all__ = ["GRAM_BLOCK", "PRODUCT_ROWS", "DenseSide", "Discovery", "Moments", "add_gram",
           "capture_dense", "collect", "dense_width", "discover", "input_groups", "mirrored",
           "pairs_outputs", "row_products", "second_moments"]

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

    Example: see :func:`discover`.
    """

    order: list[str]
    calls: dict[str, int]
    source: dict[str, int]


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

    def hook_for(name):
        def hook(module, args, kwargs):
            if name not in calls:
                order.append(name)
                inputs[name] = _layer_input(args, kwargs)
            calls[name] = calls.get(name, 0) + 1

        return hook

    handles = [
        m.register_forward_pre_hook(hook_for(n), with_kwargs=True)
        for n, m in prunable_layers(model).items()
    ]
    try:
        with explained(model, "calibration"):
            forward(model, batch, device)
    finally:
        for handle in handles:
            handle.remove()
    tokens: dict[int, int] = {}
    source = {n: tokens.setdefault(id(x), len(tokens)) for n, x in inputs.items()}
    return Discovery(order, calls, source)


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


@dataclass
class Moments:
    """One layer's statistics, float64, per convolution group.

    Attributes:
        H: ``X^T X / N`` of the rows the layer sees, ``(groups, cols, cols)``; its diagonal
            alone, ``(groups, cols)``, for diagonal statistics; ``None`` when the method reads
            no statistics (the plain problem, ``H = I``). The members of an input group share
            it.
        cross: ``C = X^T X_0 / N`` against the dense model's rows ``X_0``, shared like ``H``
            (paired statistics of a group that keeps ``X_0``; see :func:`pairs_outputs`).
        outputs: ``G = Y_0^T X / N`` for the dense outputs ``Y_0 = X_0 W^T``, ``(groups, out,
            cols)`` (paired statistics of a group that keeps ``Y_0``).
        energy: ``||Y_0||^2 / N``, ``(groups,)`` (paired statistics).

    Example: see :func:`collect`.
    """

    H: torch.Tensor | None
    cross: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    energy: torch.Tensor | None = None

    def dense_cross(self, W: torch.Tensor) -> torch.Tensor | None:
        """``G = Y_0^T X / N = W C^T`` per group for the dense weight ``W`` ``(groups, out,
        cols)``, float64; ``None`` for unpaired statistics."""
        if self.outputs is not None:
            return self.outputs
        if self.cross is None:
            return None
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


class DenseSide:
    """What an input group's paired statistics take from the dense model, call by call.

    Filled by hooks during a dense pass (:meth:`hooks`), consumed in the same order by the
    pass of the model as it is (:func:`collect`): per call, the rows ``X_0`` (a group that keeps
    the inputs) or each member's ``Y_0`` (one that keeps the outputs, :func:`pairs_outputs`),
    and each member's ``||Y_0||^2`` summed over the pass.

    Args:
        group: the input group.
        device: where rows and sums go.

    Attributes:
        keeps_outputs: :func:`pairs_outputs` of the group.
        inputs: ``X_0`` rows per call (``(n, groups * cols)``, the activations' dtype).
        outputs: per member, ``Y_0`` rows per call (``(n, out)``).
        energy: per member, ``||Y_0||^2`` per convolution group, float64.
    """

    def __init__(self, group: Sequence[Target], device: torch.device):
        self.group, self.device = list(group), device
        self.keeps_outputs = pairs_outputs(group)
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[list[torch.Tensor]] = [[] for _ in group]
        self.energy = [torch.zeros(t.groups, dtype=torch.float64, device=device)
                       for t in group]

    def hooks(self, state: dict) -> list:
        """Register the dense pass's hooks (``state["mask"]``: the batch's attention mask; they
        act while ``state.get("dense", True)``); returns their handles."""

        def keep_inputs(module, args, kwargs):
            if not state.get("dense", True):
                return
            rows = self.group[0].rows(_layer_input(args, kwargs), state["mask"])
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
        handles += [t.module.register_forward_hook(keep_outputs(i, t), with_kwargs=True)
                    for i, t in enumerate(self.group)]
        return handles


class _Moment:
    """Running sums of one input group's row products (or, ``diagonal``, of its squared
    inputs), per convolution group, in float64."""

    def __init__(self, group: Sequence[Target], device: torch.device,
                 dense: DenseSide | None, diagonal: bool = False):
        target = group[0]
        g, cols = target.groups, target.shape[1]
        self.target, self.dense, self.diagonal = target, dense, diagonal
        shape = (g, cols) if diagonal else (g, cols, cols)
        self.sum = torch.zeros(shape, dtype=torch.float64, device=device)
        self.cross = self.outputs = None
        if dense is not None and dense.keeps_outputs:
            self.outputs = [torch.zeros(g, t.shape[0], cols, dtype=torch.float64, device=device)
                            for t in group]
        elif dense is not None:
            self.cross = torch.zeros_like(self.sum)
        self.rows = 0

    def grouped(self, X: torch.Tensor) -> torch.Tensor:
        """Rows ``(n, groups * cols)`` as ``(groups, n, cols)`` on the sums' device, in float32
        at least (float64 stays float64)."""
        dtype = torch.promote_types(X.dtype, torch.float32)
        X = X.to(device=self.sum.device, dtype=dtype)
        g = self.sum.shape[0]
        return X.reshape(X.shape[0], g, X.shape[1] // g).transpose(0, 1)

    def add(self, X: torch.Tensor) -> None:
        X = self.grouped(X)
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

    def value(self, group: Sequence[Target]) -> dict[str, Moments]:
        if self.rows == 0:
            raise ValueError(
                f"no calibration input reached layer {self.target.name!r} "
                "(every position was padding?)"
            )
        H = (self.sum if self.diagonal else mirrored(self.sum)) / self.rows
        if self.dense is None:
            shared = Moments(H)
            return {t.name: shared for t in group}
        cross = None if self.cross is None else self.cross / self.rows
        return {
            t.name: Moments(H, cross, None if self.outputs is None else self.outputs[i] / self.rows,
                            self.dense.energy[i] / self.rows)
            for i, t in enumerate(group)
        }


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
    sides = [DenseSide(group, device) for group in groups]
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
    if reference is not None:
        dense = [DenseSide(group, device) for group in groups]
    sides = dense if dense is not None else [None] * len(groups)
    moments = [_Moment(group, device, side, diagonal)
               for group, side in zip(groups, sides, strict=True)]
    state: dict = {"mask": None, "dense": False}

    def accumulate(moment):
        def hook(module, args, kwargs):
            if not state["dense"]:
                moment.add(moment.target.rows(_layer_input(args, kwargs), state["mask"]))

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
