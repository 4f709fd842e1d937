"""How a pruned model holds its pruning: the pruned weights in place, the masks as bits.

After :func:`attach` a pruned layer's ``weight`` parameter (the same object as before, so
optimizers and references stay valid) holds the pruned weight, zeros off the mask, and the mask
sits beside it as packed bits in the non-persistent buffer :data:`BITS` (one bit per weight,
row-major: 1/32 of a float32 weight). The state dict has the dense model's keys and holds the
pruned weights, so ``save_pretrained``, ``torch.save(model.state_dict())``, safetensors or
accelerate need nothing from l0prune, and what they write loads into the pruned model or a fresh
one. The model is its dense size plus the bits; :func:`mask_of` gives a layer's boolean mask
back, on the layer's device.

Training that must keep the zeros (masked finetuning, gradual pruning, whole-model L0) runs
under :func:`reparametrized`: for its duration each mask takes ``torch.nn.utils.prune``'s form
(``weight_orig``, a float ``weight_mask`` and a forward pre-hook that sets ``weight =
weight_orig * weight_mask``), so the gradient of ``weight_orig`` is zero off the mask and no
optimizer step makes a pruned weight non-zero; at the end it folds back to the form above.
:func:`torch_prune` puts a model into torch's form for good, for users who train it
themselves: ``prune.is_pruned`` and ``prune.remove`` then work as on any torch-pruned model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = [
    "BITS",
    "attach",
    "forget",
    "is_masked",
    "mask_of",
    "masked_weight",
    "masks_of",
    "pack",
    "permanent_state_dict",
    "refresh",
    "reparametrized",
    "torch_prune",
    "unpack",
]

#: The name of the buffer that holds a pruned layer's mask as bits (not in the state dict).
BITS = "weight_mask_bits"


def pack(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as bits: one bit per entry, row-major, least significant bit first.

    Args:
        mask: booleans (or 0 / 1), any shape.

    Returns:
        ``ceil(mask.numel() / 8)`` bytes (uint8), on ``mask``'s device.

    Example:
        >>> pack(torch.tensor([[True, False, True], [False, False, False], [True, True, True]]))
        tensor([197,   1], dtype=torch.uint8)
    """
    flat = mask.reshape(-1).to(torch.bool)
    extra = -flat.numel() % 8
    if extra:
        flat = torch.cat([flat, flat.new_zeros(extra)])
    rows = flat.view(torch.uint8).reshape(-1, 8)
    bits = rows[:, 0].clone()
    for i in range(1, 8):
        bits |= rows[:, i] << i
    return bits


def unpack(bits: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The boolean mask of ``shape`` that :func:`pack` gave ``bits`` for.

    Computed on ``bits``' device, without a host synchronisation.

    Args:
        bits: the packed bytes.
        shape: the mask's shape.

    Returns:
        The mask (bool).

    Example:
        >>> unpack(torch.tensor([197, 1], dtype=torch.uint8), (3, 3)).int().tolist()
        [[1, 0, 1], [0, 0, 0], [1, 1, 1]]
    """
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    flat = ((bits.unsqueeze(-1) >> shifts) & 1).reshape(-1).view(torch.bool)
    return flat[: torch.Size(shape).numel()].reshape(shape)


def attach(module: nn.Module, weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Write ``weight`` (zero off ``mask``) into ``module.weight`` in place and keep ``mask``.

    A mask attached before is replaced.

    Args:
        module: a layer with a ``weight`` parameter (not in ``torch.nn.utils.prune``'s form).
        weight: the new weight, same shape (it may be ``module.weight`` itself).
        mask: the support (boolean or 0/1), same shape.

    Returns:
        None; ``module.weight`` (the same parameter object) holds ``weight * mask`` and the
        buffer :data:`BITS` the mask's bits.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> attach(layer, torch.ones(2, 2), torch.eye(2, dtype=torch.bool))
        >>> layer.weight.tolist(), sorted(layer.state_dict())
        ([[1.0, 0.0], [0.0, 1.0]], ['bias', 'weight'])
    """
    mask = mask.to(module.weight.device)
    with torch.no_grad():
        module.weight.copy_(weight.to(mask.device) * mask)
    module.register_buffer(BITS, pack(mask), persistent=False)


def forget(module: nn.Module) -> bool:
    """Drop ``module``'s mask bits; its weight keeps its values, zeros and all.

    Args:
        module: any module.

    Returns:
        Whether it held a mask.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> attach(layer, layer.weight, torch.eye(2))
        >>> forget(layer), forget(layer), (layer.weight == 0).sum().item()
        (True, False, 2)
    """
    if BITS not in module._buffers:
        return False
    del module._buffers[BITS]
    module._non_persistent_buffers_set.discard(BITS)
    return True


def _pruning_hooks(module: nn.Module) -> list[prune.BasePruningMethod]:
    return [
        hook for hook in module._forward_pre_hooks.values()
        if isinstance(hook, prune.BasePruningMethod)
    ]


def _torch_pruned(module: nn.Module) -> bool:
    return any(hook._tensor_name == "weight" for hook in _pruning_hooks(module))


def is_masked(module: nn.Module) -> bool:
    """Whether ``module``'s weight is pruned: it holds a mask (bits, or ``torch.nn.utils.prune``'s
    ``weight_mask``).

    Example:
        >>> layer = nn.Linear(2, 2); before = is_masked(layer)
        >>> attach(layer, layer.weight, torch.ones(2, 2)); before, is_masked(layer)
        (False, True)
    """
    return BITS in module._buffers or _torch_pruned(module)


def mask_of(module: nn.Module) -> torch.Tensor | None:
    """``module``'s mask, boolean in the weight's shape, on its device; ``None`` if dense.

    Args:
        module: a layer pruned by l0prune (or the ``torch.nn.utils.prune`` way), or not.

    Returns:
        The mask (a new tensor), or ``None``.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> attach(layer, layer.weight, torch.tensor([[1, 0, 1], [0, 1, 0]]))
        >>> mask_of(layer).tolist(), mask_of(nn.Linear(3, 2))
        ([[True, False, True], [False, True, False]], None)
    """
    if BITS in module._buffers:
        return unpack(module._buffers[BITS], module.weight.shape)
    if _torch_pruned(module):
        return module.weight_mask != 0
    return None


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every pruned layer's mask (:func:`mask_of`), by module name, in module order.

    A byte per weight of the pruned layers: for reading the masks, not for keeping them.

    Args:
        model: the model.

    Returns:
        Module name -> boolean mask.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> attach(model[1], model[1].weight, torch.eye(2))
        >>> {name: mask.sum().item() for name, mask in masks_of(model).items()}
        {'1': 2}
    """
    return {name: mask_of(module) for name, module in model.named_modules()
            if is_masked(module)}


def masked_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor ``name`` as the forward uses it, computed now.

    In ``torch.nn.utils.prune``'s form that is ``name_orig * name_mask`` (``module.weight`` is
    only refreshed by a forward); otherwise the tensor itself, with its zeros in place.

    Args:
        module: a layer, masked or not.
        name: the tensor's name.

    Returns:
        The masked tensor.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> prune.custom_from_mask(layer, "weight", torch.eye(2))  # doctest: +ELLIPSIS
        Linear(...)
        >>> with torch.no_grad():
        ...     _ = layer.weight_orig.fill_(1)
        >>> masked_weight(layer).sum().item()
        2.0
    """
    if hasattr(module, name + "_orig"):
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


def refresh(module: nn.Module) -> None:
    """Recompute the masked tensors of a module in ``torch.nn.utils.prune``'s form as its
    pruning hook does, outside autograd (after ``weight_orig`` was changed or loaded).

    Args:
        module: any module (one without pruning hooks is left as it is).

    Returns:
        None.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> prune.custom_from_mask(layer, "weight", torch.eye(2))  # doctest: +ELLIPSIS
        Linear(...)
        >>> with torch.no_grad():
        ...     _ = layer.weight_orig.fill_(3)
        >>> refresh(layer); layer.weight.sum().item()
        6.0
    """
    with torch.no_grad():
        for hook in _pruning_hooks(module):
            setattr(module, hook._tensor_name, masked_weight(module, hook._tensor_name))


def permanent_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with pruning made permanent, without changing ``model``.

    A model pruned by l0prune gives it as ``state_dict()`` does; in ``torch.nn.utils.prune``'s
    form each ``name_orig`` / ``name_mask`` pair becomes ``name = name_orig * name_mask``. Either
    way the keys equal those of the dense model and the dict loads into it.

    Args:
        model: the model.

    Returns:
        The state dict (masked tensors copied; others as ``state_dict()`` gives them).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> _ = prune.custom_from_mask(model[0], "weight", torch.eye(2))
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


def _to_torch_form(module: nn.Module) -> None:
    """One layer's bits into ``torch.nn.utils.prune``'s form (the masked ``weight`` computed
    outside autograd, so the model still deep-copies)."""
    mask = mask_of(module)
    forget(module)
    prune.custom_from_mask(module, "weight", mask.to(module.weight.dtype))
    refresh(module)


def _fold(module: nn.Module, order: list[str]) -> None:
    """One layer from ``torch.nn.utils.prune``'s form back to the pruned weight in place (the
    same parameter object) and the mask as bits; its parameters in ``order`` again (torch's
    form registers ``weight_orig`` last)."""
    mask = module.weight_mask != 0
    prune.remove(module, "weight")
    attach(module, module.weight, mask)
    params = [(name, module._parameters[name]) for name in order]
    module._parameters.clear()
    module._parameters.update(params)


def torch_prune(model: nn.Module) -> list[str]:
    """Put every mask of ``model`` into ``torch.nn.utils.prune``'s form, for training it with
    the zeros held.

    Each pruned layer gets ``weight_orig`` (its weight parameter, the same object),
    ``weight_mask`` (float) and the forward pre-hook that sets ``weight = weight_orig *
    weight_mask``: ``prune.is_pruned(model)`` is then True, the gradient of ``weight_orig`` is
    zero off the mask, and ``prune.remove`` (or :func:`l0prune.finalize`) makes it permanent.
    The state dict then has ``weight_orig`` / ``weight_mask`` keys, and the model takes a float
    mask and a second weight per pruned layer.

    Args:
        model: a model pruned by l0prune.

    Returns:
        The full names of the tensors reparametrized (``"fc1.weight"``), in module order.

    Example:
        >>> import l0prune
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> attach(model[0], torch.ones(2, 2), torch.eye(2))
        >>> l0prune.torch_prune(model), prune.is_pruned(model)
        (['0.weight'], True)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    done = []
    for prefix, module in model.named_modules():
        if BITS in module._buffers and not _torch_pruned(module):
            _to_torch_form(module)
            done.append(f"{prefix}.weight" if prefix else "weight")
    return done


@contextmanager
def reparametrized(model: nn.Module) -> Iterator[None]:
    """``torch.nn.utils.prune``'s form (:func:`torch_prune`) for the duration, so training
    keeps every pruned weight at zero; then each mask folds back (also on an exception), the
    parameters in their order.

    Layers already in torch's form (a user's) stay in it.

    Args:
        model: the model.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> attach(layer, torch.ones(2, 2), torch.eye(2))
        >>> with reparametrized(layer):
        ...     inside = prune.is_pruned(layer)
        >>> inside, prune.is_pruned(layer), mask_of(layer).sum().item()
        (True, False, 2)
    """
    layers = [(m, list(m._parameters)) for m in model.modules()
              if BITS in m._buffers and not _torch_pruned(m)]
    for module, _ in layers:
        _to_torch_form(module)
    try:
        yield
    finally:
        for module, order in layers:
            _fold(module, order)
