"""Making pruning permanent in a model: plain ``weight`` parameters with the zeros in them.

After :func:`l0prune.prune` every pruned tensor is the ``torch.nn.utils.prune`` triple
``weight_orig`` / ``weight_mask`` / forward pre-hook, which tools that read ``state_dict()``
(Hugging Face ``save_pretrained``, ``torch.save``, serving stacks) do not understand: they see
extra keys and no ``weight``. :func:`finalize` folds each mask into its tensor,
``weight = weight_orig * weight_mask``, and removes the rest, so the model is an ordinary model
again whose state dict has the dense model's keys.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

__all__ = ["finalize"]


def finalize(model: nn.Module) -> list[str]:
    """Remove the pruning re-parametrisation from every module of ``model``, keeping the zeros.

    Each pruned tensor keeps its parameter object (``weight_orig`` becomes ``weight`` again, with
    the masked values), so optimizers and tied weights that hold it stay valid. Afterwards
    ``prune.is_pruned(model)`` is False and masked finetuning can no longer hold the zeros.

    Args:
        model: a model pruned the ``torch.nn.utils.prune`` way (or not: then nothing changes).

    Returns:
        The full names of the tensors made permanent (``"fc1.weight"``), in module order.

    Example:
        >>> import torch
        >>> from l0prune.model.masks import attach
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> attach(model[0], torch.ones(2, 2), torch.eye(2))
        >>> finalize(model), prune.is_pruned(model), sorted(model.state_dict())
        (['0.weight'], False, ['0.bias', '0.weight'])
        >>> model[0].weight.sum().item()
        2.0
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    done = []
    for prefix, module in model.named_modules():
        hooks = [
            hook for hook in module._forward_pre_hooks.values()
            if isinstance(hook, prune.BasePruningMethod)
        ]
        for hook in hooks:
            name = hook._tensor_name
            prune.remove(module, name)
            done.append(f"{prefix}.{name}" if prefix else name)
    return done
