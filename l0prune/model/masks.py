"""Masks in models the way ``torch.nn.utils.prune`` stores them.

A pruned tensor ``weight`` becomes the parameter ``weight_orig``, the buffer ``weight_mask`` and a
forward pre-hook that sets ``weight = weight_orig * weight_mask`` before every forward. So
``prune.is_pruned(model)`` is true, ``prune.remove(module, "weight")`` makes it permanent, and the
model deep-copies, pickles and saves like any pruned torch model.

One difference from ``torch.nn.utils.prune``: the masked ``weight`` is computed outside autograd
when a mask is attached (the forward pre-hook recomputes it, with gradients, at every forward),
so a freshly pruned model deep-copies; torch's own pruning functions leave a non-leaf tensor
there, which ``copy.deepcopy`` refuses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["attach", "masked_weight", "permanent_state_dict", "refresh"]


def attach(module: nn.Module, weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Write ``weight`` (zero off ``mask``) into ``module.weight`` and attach ``mask``.

    Args:
        module: a layer with an unpruned ``weight`` parameter.
        weight: the new weight, same shape.
        mask: the support (boolean or 0/1), same shape.

    Returns:
        None; ``module`` holds ``weight_orig`` (the same parameter object) and ``weight_mask``.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> attach(layer, torch.eye(2), torch.eye(2, dtype=torch.bool))
        >>> prune.is_pruned(layer), layer.weight_mask.sum().item()
        (True, 2.0)
    """
    with torch.no_grad():
        module.weight.copy_(weight * mask)
    prune.custom_from_mask(module, "weight", mask.to(module.weight.dtype))
    refresh(module)


def _pruning_hooks(module: nn.Module):
    return [
        hook for hook in module._forward_pre_hooks.values()
        if isinstance(hook, prune.BasePruningMethod)
    ]


def masked_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``name_orig * name_mask`` computed now (``module.weight`` is only refreshed by a forward).

    Args:
        module: a layer, masked or not.
        name: the tensor's name.

    Returns:
        The masked tensor (the plain one when ``module`` is not masked).

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> attach(layer, torch.ones(2, 2), torch.eye(2))
        >>> masked_weight(layer).sum().item()
        2.0
    """
    if hasattr(module, name + "_orig"):
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


def refresh(module: nn.Module) -> None:
    """Recompute the masked tensors of ``module`` as its pruning hook does, outside autograd.

    Args:
        module: any module (one without pruning hooks is left as it is).

    Returns:
        None.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> attach(layer, torch.ones(2, 2), torch.eye(2))
        >>> with torch.no_grad():
        ...     _ = layer.weight_orig.mul_(3)
        >>> refresh(layer); layer.weight.sum().item()
        6.0
    """
    with torch.no_grad():
        for hook in _pruning_hooks(module):
            setattr(module, hook._tensor_name, masked_weight(module, hook._tensor_name))


def permanent_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with pruning made permanent, without changing ``model``.

    Each ``name_orig`` / ``name_mask`` pair becomes ``name = name_orig * name_mask``, so the keys
    equal those of the dense model and the dict loads into it.

    Args:
        model: the model.

    Returns:
        The state dict (masked tensors copied; others as ``state_dict()`` gives them).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> attach(model[0], torch.ones(2, 2), torch.eye(2))
        >>> sorted(permanent_state_dict(model))
        ['0.bias', '0.weight']
    """
    state = model.state_dict()
    for prefix, module in model.named_modules():
        for hook in _pruning_hooks(module):
            name = (prefix + "." if prefix else "") + hook._tensor_name
            del state[name + "_orig"], state[name + "_mask"]
            state[name] = masked_weight(module, hook._tensor_name).detach().clone()
    return state
