"""Layer input statistics: ``H = X^T X / N`` streamed through forward pre-hooks.

The activations are never stored: each hook turns the layer's input into rows (patches for a
convolution, real tokens only when the batch has an ``attention_mask``) and adds ``X^T X`` to a
float64 sum on the model's device. One pass over the calibration data fills the sums of every
layer hooked.

Layers that read the same input tensor in the same way (a transformer's query, key and value
projections) form one *input group*: one sum, filled once per forward, shared by all of them.
:func:`discover` finds the groups and the order the layers run in from one calibration batch.

*Paired* statistics (for sequential pruning) also take the rows ``X_0`` the dense model gives a
layer, batch by batch next to the rows ``X`` it sees with earlier layers pruned, and sum
``X^T X_0`` and ``X_0^T X_0`` as well. The dense rows come from a reference pass per batch
(``reference``), or were captured before by :func:`capture_rows` (one dense pass for several
groups: block by block, the dense block does not change while the block is pruned).

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

from .batches import attention_mask, check_data, forward, to_device
from .input_check import explained
from .targets import Target, prunable_layers, select_targets

__all__ = ["PRODUCT_ROWS", "Discovery", "Moments", "capture_rows", "collect", "discover",
           "input_groups", "row_products", "second_moments"]

#: Rows per float32 product before it is added to the float64 sums (see the module docstring).
PRODUCT_ROWS = 1024


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
    """Second moments of one layer's input rows, float64, ``(groups, cols, cols)``.

    Attributes:
        H: ``X^T X / N`` of the rows the layer sees.
        cross: ``X^T X_0 / N`` against the rows ``X_0`` the dense model gives it (paired
            statistics only).
        dense: ``X_0^T X_0 / N`` (paired statistics only).

    Example: see :func:`collect`.
    """

    H: torch.Tensor
    cross: torch.Tensor | None = None
    dense: torch.Tensor | None = None


def row_products(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``X^T Y`` per group for rows ``(groups, n, cols)``: float32 products (float64 inputs:
    float64) of at most :data:`PRODUCT_ROWS` rows at a time, summed in float64.

    Args:
        X: rows, ``(groups, n, cols)``.
        Y: their twins, the same shape.

    Returns:
        ``(groups, cols, cols)``, float64.

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


class _Moment:
    """Running sums of one input group's row products, per convolution group, in float64."""

    def __init__(self, target: Target, device: torch.device, paired: bool):
        g, cols = target.groups, target.shape[1]
        self.target = target
        self.sum = torch.zeros(g, cols, cols, dtype=torch.float64, device=device)
        self.cross = torch.zeros_like(self.sum) if paired else None
        self.dense = torch.zeros_like(self.sum) if paired else None
        self.references: list[torch.Tensor] = []
        self.rows = 0

    def grouped(self, X: torch.Tensor) -> torch.Tensor:
        """Rows ``(n, groups * cols)`` as ``(groups, n, cols)`` on the sums' device, in float32
        at least (float64 stays float64)."""
        dtype = torch.promote_types(X.dtype, torch.float32)
        X = X.to(device=self.sum.device, dtype=dtype)
        return X.reshape(X.shape[0], *self.sum.shape[:2]).transpose(0, 1)

    def add(self, X: torch.Tensor) -> None:
        X = self.grouped(X)
        self.sum += row_products(X, X)
        if self.cross is not None:
            X0 = self.grouped(self.references.pop(0))
            self.cross += row_products(X, X0)
            self.dense += row_products(X0, X0)
        self.rows += X.shape[1]

    def value(self) -> Moments:
        if self.rows == 0:
            raise ValueError(
                f"no calibration input reached layer {self.target.name!r} "
                "(every position was padding?)"
            )
        if self.cross is None:
            return Moments(self.sum / self.rows)
        return Moments(self.sum / self.rows, self.cross / self.rows, self.dense / self.rows)


def _stop(module, args, kwargs):
    raise _Stop


def _stop_after(groups: Sequence[Sequence[Target]], discovery: Discovery):
    """The module after whose input a pass over ``groups`` can stop, or ``None`` when some
    member runs more than once per forward (then every call counts)."""
    members = [t for group in groups for t in group]
    if not all(discovery.calls[t.name] == 1 for t in members):
        return None
    return max(members, key=lambda t: discovery.order.index(t.name)).module


def _run(model: nn.Module, batch, device: torch.device):
    """``model`` on ``batch``; ``None`` when a hook stopped the pass."""
    try:
        return forward(model, batch, device)
    except _Stop:
        return None


@torch.no_grad()
def capture_rows(
    model: nn.Module,
    data: Iterable,
    groups: Sequence[Sequence[Target]],
    device: torch.device,
    discovery: Discovery,
    *,
    stop: bool = True,
) -> list[list[torch.Tensor]]:
    """One pass over ``data`` keeping each group's input rows (real tokens only), per batch.

    These are the dense rows ``X_0`` that :func:`collect` pairs with (its ``dense_rows``):
    capturing several groups in one dense pass replaces a reference pass per group.

    Args:
        model: the model, in the state the rows describe (the dense one).
        data: calibration batches.
        groups: input groups (from :func:`input_groups`).
        device: where batches and rows go.
        discovery: the model's :class:`Discovery`.
        stop: end each forward once every group has seen its input (``False``: run it to the
            end, for a caller that also wants the outputs).

    Returns:
        Per group, its rows ``(n, groups * cols)`` per batch, in the activations' dtype.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [torch.randn(16, 4), torch.randn(3, 4)]
        >>> d = discover(model, data[0], torch.device("cpu"))
        >>> groups = input_groups(select_targets(model, d.order), d)
        >>> [[tuple(r.shape) for r in rows] for rows in capture_rows(
        ...     model, data, groups, torch.device("cpu"), d)]
        [[(16, 4), (3, 4)], [(16, 8), (3, 8)]]
    """
    found: list[list[torch.Tensor]] = [[] for _ in groups]
    state: dict = {"mask": None}

    def keep(target, rows):
        def hook(module, args, kwargs):
            rows.append(target.rows(_layer_input(args, kwargs), state["mask"]).to(device))

        return hook

    handles = [group[0].module.register_forward_pre_hook(keep(group[0], rows), with_kwargs=True)
               for group, rows in zip(groups, found, strict=True)]
    last = _stop_after(groups, discovery) if stop else None
    if last is not None:
        handles.append(last.register_forward_pre_hook(_stop, with_kwargs=True))
    try:
        for batch in data:
            batch = to_device(batch, device)
            state["mask"] = attention_mask(batch)
            _run(model, batch, device)
    finally:
        for handle in handles:
            handle.remove()
    return found


@torch.no_grad()
def collect(
    model: nn.Module,
    data: Iterable,
    groups: Sequence[Sequence[Target]],
    device: torch.device,
    discovery: Discovery,
    reference: Callable[[], AbstractContextManager] | None = None,
    dense_rows: Sequence[list[torch.Tensor]] | None = None,
) -> dict[str, Moments]:
    """One pass over ``data`` filling the second moments of every group in ``groups``.

    With ``reference``, the statistics are paired: each batch first runs inside
    ``reference()`` (which puts the dense model's weights in place) to get the rows ``X_0`` the
    dense model gives each group, then as the model is, to get its own rows ``X``. With
    ``dense_rows`` (from :func:`capture_rows`, one list per group, consumed batch by batch)
    the statistics are paired with those rows and no reference pass runs.

    Each forward stops as soon as every group has seen its input, unless some layer runs more
    than once per forward (then all its calls count, so the forward runs to the end).

    Args:
        model: the model, in the state the statistics describe.
        data: calibration batches.
        groups: input groups (from :func:`input_groups`).
        device: where batches and sums live.
        discovery: the model's :class:`Discovery`.
        reference: a context manager factory for paired statistics, or ``None``.
        dense_rows: the dense rows of each group per batch (instead of ``reference``); the
            lists are emptied as they are used.

    Returns:
        :class:`Moments` per target name; members of a group share them.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [torch.randn(16, 4)]
        >>> d = discover(model, data[0], torch.device("cpu"))
        >>> groups = input_groups(select_targets(model, d.order), d)
        >>> collect(model, data, groups, torch.device("cpu"), d)["0"].H.shape
        torch.Size([1, 4, 4])
    """
    if reference is not None and dense_rows is not None:
        raise ValueError("give reference or dense_rows, not both")
    paired = reference is not None or dense_rows is not None
    moments = [_Moment(group[0], device, paired) for group in groups]
    if dense_rows is not None:
        for moment, rows in zip(moments, dense_rows, strict=True):
            moment.references = rows
    state: dict = {"mask": None, "reference": False}

    def accumulate(moment):
        def hook(module, args, kwargs):
            rows = moment.target.rows(_layer_input(args, kwargs), state["mask"])
            if state["reference"]:
                moment.references.append(rows)
            else:
                moment.add(rows)

        return hook

    handles = [
        m.target.module.register_forward_pre_hook(accumulate(m), with_kwargs=True)
        for m in moments
    ]
    last = _stop_after(groups, discovery)
    if last is not None:
        handles.append(last.register_forward_pre_hook(_stop, with_kwargs=True))
    try:
        for batch in data:
            batch = to_device(batch, device)
            state["mask"] = attention_mask(batch)
            if reference is not None:
                state["reference"] = True
                with reference():
                    _run(model, batch, device)
                state["reference"] = False
            _run(model, batch, device)
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for moment, group in zip(moments, groups, strict=True):
        value = moment.value()
        result.update((t.name, value) for t in group)
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
        calibration: re-iterable batches (see :mod:`l0prune.batches`).
        targets: layer name patterns (see :func:`~l0prune.targets.select_targets`); default:
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
