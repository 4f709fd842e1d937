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
``X^T X_0`` and ``X_0^T X_0`` as well.
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

__all__ = ["Discovery", "Moments", "collect", "discover", "input_groups", "second_moments"]


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
        """Rows ``(n, groups * cols)`` as float64 ``(groups, n, cols)``."""
        X = X.to(device=self.sum.device, dtype=torch.float64)
        return X.reshape(X.shape[0], *self.sum.shape[:2]).transpose(0, 1)

    def add(self, X: torch.Tensor) -> None:
        X = self.grouped(X)
        self.sum.baddbmm_(X.transpose(1, 2), X)
        self.rows += X.shape[1]
        if self.cross is not None:
            X0 = self.references.pop(0)
            self.cross.baddbmm_(X.transpose(1, 2), X0)
            self.dense.baddbmm_(X0.transpose(1, 2), X0)

    def value(self) -> Moments:
        if self.rows == 0:
            raise ValueError(
                f"no calibration input reached layer {self.target.name!r} "
                "(every position was padding?)"
            )
        if self.cross is None:
            return Moments(self.sum / self.rows)
        return Moments(self.sum / self.rows, self.cross / self.rows, self.dense / self.rows)


@torch.no_grad()
def collect(
    model: nn.Module,
    data: Iterable,
    groups: Sequence[Sequence[Target]],
    device: torch.device,
    discovery: Discovery,
    reference: Callable[[], AbstractContextManager] | None = None,
) -> dict[str, Moments]:
    """One pass over ``data`` filling the second moments of every group in ``groups``.

    With ``reference``, the statistics are paired: each batch first runs inside
    ``reference()`` (which puts the dense model's weights in place) to get the rows ``X_0`` the
    dense model gives each group, then as the model is, to get its own rows ``X``.

    Each forward stops as soon as every group has seen its input, unless some layer runs more
    than once per forward (then all its calls count, so the forward runs to the end).

    Args:
        model: the model, in the state the statistics describe.
        data: calibration batches.
        groups: input groups (from :func:`input_groups`).
        device: where batches and sums live.
        discovery: the model's :class:`Discovery`.
        reference: a context manager factory for paired statistics, or ``None``.

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
    moments = [_Moment(group[0], device, reference is not None) for group in groups]
    state: dict = {"mask": None, "reference": False}

    def accumulate(moment):
        def hook(module, args, kwargs):
            rows = moment.target.rows(_layer_input(args, kwargs), state["mask"])
            if state["reference"]:
                moment.references.append(moment.grouped(rows))
            else:
                moment.add(rows)

        return hook

    def stop(module, args, kwargs):
        raise _Stop

    def run(batch):
        try:
            forward(model, batch, device)
        except _Stop:
            pass

    handles = [
        m.target.module.register_forward_pre_hook(accumulate(m), with_kwargs=True)
        for m in moments
    ]
    members = [t.name for group in groups for t in group]
    if all(discovery.calls[n] == 1 for n in members):
        last = max(members, key=discovery.order.index)
        module = next(t.module for group in groups for t in group if t.name == last)
        handles.append(module.register_forward_pre_hook(stop, with_kwargs=True))
    try:
        for batch in data:
            batch = to_device(batch, device)
            state["mask"] = attention_mask(batch)
            if reference is not None:
                state["reference"] = True
                with reference():
                    run(batch)
                state["reference"] = False
            run(batch)
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
