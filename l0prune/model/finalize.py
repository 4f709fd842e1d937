"""Making pruning permanent in a model: plain weights with the zeros in them, no masks kept.

After :func:`l0prune.prune` every pruned layer already holds its pruned weight in its plain
``weight`` parameter, so its state dict saves and loads like the dense model's; the masks sit
beside the weights as bits (:mod:`l0prune.model.masks`), which masked finetuning needs to keep
the zeros. :func:`finalize` drops them, and folds any mask in ``torch.nn.utils.prune``'s form
(``weight_orig`` / ``weight_mask`` / forward pre-hook, from :func:`l0prune.torch_prune` or torch's
own pruning functions) into its tensor, ``weight = weight_orig * weight_mask``: the model is an
ordinary model again.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from .masks import forget

__all__ = ["finalize"]


def finalize(model: nn.Module) -> list[str]:
    """Make the pruning of every module of ``model`` permanent, keeping the zeros.

    Each pruned tensor keeps its parameter object (in ``torch.nn.utils.prune``'s form,
    ``weight_orig`` becomes ``weight`` again, with the masked values), so optimizers and tied
    weights that hold it stay valid. Afterwards no mask is left: masked finetuning can no
    longer hold the zeros, and the model can be pruned again.

    Args:
        model: a model pruned by l0prune or the ``torch.nn.utils.prune`` way (or not: then
            nothing changes).

    Returns:
        The full names of the tensors made permanent (``"fc1.weight"``), in module order.

    Example:
        >>> import torch
        >>> from l0prune.model.masks import attach, is_masked
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> attach(model[0], torch.ones(2, 2), torch.eye(2))
        >>> finalize(model), is_masked(model[0]), sorted(model.state_dict())
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
        names = [hook._tensor_name for hook in hooks]
        for name in names:
            prune.remove(module, name)
        if forget(module) and "weight" not in names:
            names.append("weight")
        done += [f"{prefix}.{name}" if prefix else name for name in names]
    return done
