"""Naming the layer a batch does not fit.

A calibration or validation batch of the wrong dtype or width fails deep inside torch
("mat1 and mat2 must have the same dtype") with no layer named. :func:`explained` runs a forward
pass while tracking which module is running; when the pass fails in a module whose input does
not match its weights (dtype, or the input width of a ``Linear`` / the channels of a
convolution), the failure becomes a ``ValueError`` naming that layer, the input it expects and
the one it got. Any other failure propagates as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["explained"]


def _expected(module: nn.Module) -> tuple[str, int | None, torch.dtype] | None:
    """``(what the width counts, the width, the dtype)`` a module's input must have, or
    ``None`` for a module without a weight to judge by."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    if isinstance(module, nn.Linear):
        return "features in the last dimension", module.in_features, weight.dtype
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "channels in dimension 1", module.in_channels, weight.dtype
    return "", None, weight.dtype


def _mismatch(module: nn.Module, x) -> str | None:
    """What is wrong with ``x`` as ``module``'s input, or ``None`` if nothing visible is."""
    expected = _expected(module)
    if expected is None or not isinstance(x, torch.Tensor):
        return None
    what, width, dtype = expected
    got = x.shape[-1] if isinstance(module, nn.Linear) else (
        x.shape[1] if width is not None and x.ndim > 1 else None)
    if x.is_floating_point() and x.dtype != dtype or width is not None and got != width:
        width_text = f"{width} {what}, " if width is not None else ""
        return (f"expects input with {width_text}{dtype}; got shape {tuple(x.shape)}, "
                f"{x.dtype}")
    return None


@contextmanager
def explained(model: nn.Module, what: str) -> Iterator[None]:
    """Run the block (a forward pass of ``model`` on a ``what`` batch); a failure in a layer
    whose input does not fit it becomes a ``ValueError`` naming the layer.

    Args:
        model: the model the block runs.
        what: the data, for the message (``"calibration"``, ``"validation"``).

    Example:
        >>> layer = nn.Sequential(nn.Linear(4, 2))
        >>> try:
        ...     with explained(layer, "calibration"):
        ...         layer(torch.zeros(3, 5))
        ... except ValueError as err:
        ...     print(str(err)[:71])
        the calibration batch does not fit layer '0' (Linear): it expects input
    """
    running: list[tuple[str, nn.Module, object]] = []
    names = {id(m): n for n, m in model.named_modules()}

    def enter(module, args):
        running.append((names.get(id(module), type(module).__name__), module,
                        args[0] if args else None))

    def leave(module, args, output):
        running.pop()

    handles = [h for m in model.modules() for h in (
        m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        yield
    except RuntimeError as err:
        if running:
            name, module, x = running[-1]
            problem = _mismatch(module, x)
            if problem is not None:
                raise ValueError(
                    f"the {what} batch does not fit layer {name!r} ({type(module).__name__}): "
                    f"it {problem} ({str(err).strip().splitlines()[0]})"
                ) from err
        raise
    finally:
        for handle in handles:
            handle.remove()
