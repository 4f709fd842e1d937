"""A model's state, captured so that a run can put it back exactly.

A run changes a model in place: weights are rewritten, masks attached (as buffers), parameters
and buffers finetuned, the model moved between devices and switched between train and eval mode.
A :class:`Snapshot` records every module's parameter and buffer objects (and their values), its
hooks and its mode, and :meth:`Snapshot.restore` puts all of it back: the same tensor objects,
the same values, on the same devices, without the buffers and hooks added since (masks, any
pruning re-parametrization). The search uses
it to start each trial from the dense model; a failed run uses it to leave the model untouched.
A run on another device captures the model where it is (the copy stays there, off the run's
device), then moves it with :func:`move`, which keeps every tensor object, so the snapshot still
names them and can put them back.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Snapshot", "move", "put_back"]


@torch.no_grad()
def put_back(tensor: torch.Tensor, saved: torch.Tensor, requires_grad: bool,
             grad: torch.Tensor | None, *, devices: bool = True) -> None:
    """Give ``tensor`` (the same object) the value, dtype, shape and gradient captured.

    Args:
        tensor: a parameter or buffer.
        saved: its captured value.
        requires_grad: its captured ``requires_grad``.
        grad: its captured gradient, or ``None``.
        devices: back on the device it was captured on; ``False``: on the one it is on now.

    Returns:
        None.

    Example:
        >>> weight = torch.zeros(2)
        >>> put_back(weight, torch.ones(2), False, None); weight
        tensor([1., 1.])
    """
    device = saved.device if devices else tensor.device
    if (tensor.device, tensor.dtype, tensor.shape) == (device, saved.dtype, saved.shape):
        tensor.copy_(saved)
    else:
        tensor.data = saved.to(device, copy=True)
    tensor.requires_grad_(requires_grad)
    tensor.grad = None if grad is None else grad.to(device, copy=True)


class _ModuleState:
    def __init__(self, module: nn.Module):
        self.params = list(module._parameters.items())
        self.buffers = list(module._buffers.items())
        self.non_persistent = set(module._non_persistent_buffers_set)
        self.pre_hooks = set(module._forward_pre_hooks)
        self.hooks = set(module._forward_hooks)
        self.attributes = set(module.__dict__)
        self.training = module.training


class Snapshot:
    """Everything a run may change in ``model``; memory: one copy of its parameters and buffers
    (and of their gradients, if any).

    Args:
        model: the model to capture.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> snapshot = Snapshot(model)
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_()
        >>> snapshot.restore(); bool(model.weight.abs().sum() > 0)
        True
    """

    def __init__(self, model: nn.Module):
        self.modules = [(m, _ModuleState(m)) for m in model.modules()]
        self.values: dict[int, tuple] = {}
        for _, state in self.modules:
            for _, tensor in state.params + state.buffers:
                if tensor is not None and id(tensor) not in self.values:
                    grad = None if tensor.grad is None else tensor.grad.detach().clone()
                    self.values[id(tensor)] = (
                        tensor, tensor.detach().clone(), tensor.requires_grad, grad
                    )

    def value(self, tensor: torch.Tensor) -> torch.Tensor:
        """The captured value of ``tensor`` (a parameter or buffer of the model), read-only use.

        Args:
            tensor: a parameter or buffer captured.

        Returns:
            Its value at capture time.

        Example:
            >>> layer = nn.Linear(2, 2); snapshot = Snapshot(layer)
            >>> torch.equal(snapshot.value(layer.weight), layer.weight)
            True
        """
        return self.values[id(tensor)][1]

    def restore(self, *, devices: bool = True) -> None:
        """Put the model back as captured: structure, values, devices, hooks and modes.

        Args:
            devices: put every tensor back on the device it was captured on; ``False`` copies
                the captured values onto the device each tensor is on now (a run that moved the
                model there starts a trial from the dense values without moving it back).

        Returns:
            None.

        Example:
            >>> layer = nn.Linear(2, 2); snapshot = Snapshot(layer)
            >>> _ = layer.train(False); snapshot.restore(); layer.training
            True
        """
        for module, state in self.modules:
            for key in set(module._forward_pre_hooks) - state.pre_hooks:
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
            for key in set(module._forward_hooks) - state.hooks:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
            for name, _ in state.params + state.buffers:
                if name not in state.attributes:
                    module.__dict__.pop(name, None)
            module._parameters.clear()
            module._parameters.update(state.params)
            module._buffers.clear()
            module._buffers.update(state.buffers)
            module._non_persistent_buffers_set.clear()
            module._non_persistent_buffers_set.update(state.non_persistent)
            module.training = state.training
        for tensor, saved, requires_grad, grad in self.values.values():
            put_back(tensor, saved, requires_grad, grad, devices=devices)

    def restore_modes(self) -> None:
        """Put back only each module's train / eval mode.

        Returns:
            None.

        Example:
            >>> layer = nn.Linear(2, 2); snapshot = Snapshot(layer)
            >>> _ = layer.eval(); snapshot.restore_modes(); layer.training
            True
        """
        for module, state in self.modules:
            module.training = state.training


def move(model: nn.Module, device: torch.device) -> None:
    """Move ``model``'s parameters, buffers and gradients to ``device``, keeping each tensor
    object (``model.to`` replaces buffers by new ones, which a :class:`Snapshot` taken before
    would no longer name).

    Args:
        model: the model.
        device: where its tensors go.

    Returns:
        None.

    Example:
        >>> layer = nn.BatchNorm1d(2); mean = layer.running_mean
        >>> move(layer, torch.device("cpu")); layer.running_mean is mean
        True
    """
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            for tensor in (*module._parameters.values(), *module._buffers.values()):
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                tensor.data = tensor.data.to(device)
                if tensor.grad is not None:
                    tensor.grad.data = tensor.grad.data.to(device)
