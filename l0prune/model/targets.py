"""The layers a run prunes, and each one's weight and inputs as the solvers see them.

Prunable layers are ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` (grouped too) and Hugging Face's
``Conv1D`` (GPT-2 style, weight stored in x out). The solvers work on an ``out x in`` matrix and
the ``in x in`` second moment of its input rows; here is how each layer maps onto that:

- ``Linear``: the weight as is; input rows are the input's last dimension (tokens x in).
- ``Conv1D``: the transposed weight; rows as for ``Linear``.
- ``Conv1d`` / ``Conv2d``: the weight flattened to ``out x (in * kh * kw)`` (channel-major, the
  order ``F.unfold`` uses); input rows are the unfolded patches, one per output position.
  With ``groups = g`` the output channels of group ``i`` read only the input channels of group
  ``i``, so the layer is ``g`` independent problems of ``out/g x (in/g * kh * kw)``, each with
  its own second moment.

Every weight is therefore seen as ``(groups, rows, cols)``; ``groups = 1`` except for grouped
convolutions.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .masks import is_masked

__all__ = ["Selector", "Target", "check_finite", "check_unshared", "layer_types",
           "prunable_layers", "select_targets", "targets_by_name"]

log = logging.getLogger("l0prune.targets")


def layer_types() -> tuple[type, ...]:
    """The prunable layer types; Hugging Face's ``Conv1D`` when ``transformers`` is loaded.

    A model holding a ``Conv1D`` has imported ``transformers``, so the check never imports it.

    Args:
        None.

    Returns:
        A tuple of ``nn.Module`` subclasses.

    Example:
        >>> nn.Linear in layer_types()
        True
    """
    types: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
    hf = sys.modules.get("transformers.pytorch_utils")
    if hf is not None and hasattr(hf, "Conv1D"):
        types += (hf.Conv1D,)
    return types


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every prunable layer of ``model`` by fully qualified name, in registration order.

    Args:
        model: the model.

    Returns:
        ``name -> module``.

    Example:
        >>> list(prunable_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))))
        ['0', '2']
    """
    types = layer_types()
    return {name: m for name, m in model.named_modules() if isinstance(m, types)}


@dataclass(eq=False)
class Target:
    """One prunable layer: its name, module and the ``(groups, rows, cols)`` view of its weight.

    Example:
        >>> t = Target("conv", nn.Conv2d(4, 6, 3, groups=2))
        >>> t.shape, t.groups, t.kernel
        ((3, 18), 2, 9)
    """

    name: str
    module: nn.Module

    @property
    def is_conv(self) -> bool:
        """Whether the layer is a ``Conv1d`` / ``Conv2d``."""
        return isinstance(self.module, (nn.Conv1d, nn.Conv2d))

    @property
    def is_transposed(self) -> bool:
        """Whether the weight is stored in x out (Hugging Face ``Conv1D``)."""
        return not isinstance(self.module, (nn.Linear, nn.Conv1d, nn.Conv2d))

    @property
    def groups(self) -> int:
        """Independent problems in the layer: a convolution's ``groups``, else 1."""
        return self.module.groups if self.is_conv else 1

    @property
    def kernel(self) -> int:
        """Weight columns per input feature: ``kh * kw`` for a convolution, else 1."""
        return math.prod(self.module.kernel_size) if self.is_conv else 1

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The stored weight's shape."""
        return tuple(self.module.weight.shape)

    @property
    def out_in_shape(self) -> tuple[int, ...]:
        """The weight's shape as reports show it, out x in (x kernel) for every layer type: a
        ``Conv1D``'s stored in x out is transposed."""
        w = self.weight_shape
        return (w[1], w[0]) if self.is_transposed else w

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of one problem: ``(out/groups, in/groups * kernel)``."""
        w = self.weight_shape
        if self.is_transposed:
            return (w[1], w[0])
        return (w[0] // self.groups, math.prod(w[1:]))

    @property
    def total(self) -> int:
        """Number of weights in the layer."""
        return math.prod(self.weight_shape)

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor as ``(groups, rows, cols)``.

        Args:
            weight: the weight, or anything of its shape (a mask).

        Returns:
            The view (a transpose for ``Conv1D``).
        """
        if self.is_transposed:
            return weight.T.unsqueeze(0)
        return weight.reshape(self.groups, *self.shape)

    def unmatrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`matrix`: ``(groups, rows, cols)`` back to the weight's shape.

        Args:
            matrix: ``(groups, rows, cols)``.

        Returns:
            The tensor in the stored weight's shape.
        """
        if self.is_transposed:
            return matrix[0].T.contiguous()
        return matrix.reshape(self.weight_shape)

    @property
    def signature(self) -> tuple:
        """How the layer turns its input into rows; layers reading one input share ``H`` only
        when this agrees."""
        m = self.module
        if not self.is_conv:
            return ("rows", self.shape[1])
        return (
            "patches", m.in_channels, m.groups, tuple(m.kernel_size), tuple(m.stride),
            tuple(m.dilation), tuple(m._reversed_padding_repeated_twice), m.padding_mode,
        )

    def rows(self, x: torch.Tensor, mask: torch.Tensor | None = None,
             features: tuple[int, int] | None = None) -> torch.Tensor:
        """The layer's input as ``(n, groups * cols)`` rows (patches for a convolution).

        Args:
            x: the layer's input.
            mask: an ``attention_mask`` (batch x sequence); rows at its zeros (padding) are
                dropped when ``x`` is batch x sequence x features.
            features: only the columns of input features ``start:stop`` (of each convolution
                group; a convolution's input channel spans :attr:`kernel` columns), unfolded
                from those channels alone: a block of a block-diagonal ``H``.

        Returns:
            The rows whose second moment is ``H`` (or its block).

        Example:
            >>> Target("c", nn.Conv2d(2, 4, 3)).rows(torch.zeros(1, 2, 5, 5)).shape
            torch.Size([9, 18])
            >>> Target("c", nn.Conv2d(2, 4, 3)).rows(torch.zeros(1, 2, 5, 5), features=(1, 2)).shape
            torch.Size([9, 9])
        """
        if self.is_conv:
            return self._patches(x, features)
        if mask is not None and x.ndim >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            x = x[mask.to(device=x.device) != 0]
        x = x.reshape(-1, x.shape[-1])
        return x if features is None else x[:, features[0]:features[1]]

    def output_rows(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output less its bias as ``(n, out)`` rows, row ``i`` the output of
        :meth:`rows` ``i``: ``rows(x) @ matrix(W)[j]^T`` for each group ``j``, side by side.

        Args:
            y: the layer's output.
            mask: as for :meth:`rows`.

        Returns:
            The rows ``X W^T`` (bias removed).

        Example:
            >>> layer = nn.Linear(3, 2)
            >>> x = torch.randn(4, 3)
            >>> t = Target("fc", layer)
            >>> torch.allclose(t.output_rows(layer(x)), t.rows(x) @ layer.weight.T, atol=1e-6)
            True
        """
        if self.is_conv:
            if y.ndim == len(self.module.kernel_size) + 1:  # unbatched input
                y = y.unsqueeze(0)
            y = y.movedim(1, -1).reshape(-1, y.shape[1])
        else:
            if mask is not None and y.ndim >= 3 and tuple(y.shape[:2]) == tuple(mask.shape):
                y = y[mask.to(device=y.device) != 0]
            y = y.reshape(-1, y.shape[-1])
        bias = getattr(self.module, "bias", None)
        return y if bias is None else y - bias.detach()

    def _patches(self, x: torch.Tensor, features: tuple[int, int] | None) -> torch.Tensor:
        m = self.module
        spatial = len(m.kernel_size)
        if x.ndim == spatial + 1:  # unbatched input
            x = x.unsqueeze(0)
        if features is not None and m.groups == 1:  # the channels of the features
            x = x[:, features[0]:features[1]]
        elif features is not None:  # ... in each group
            width = m.in_channels // m.groups
            channels = torch.arange(*features, device=x.device)
            channels = (torch.arange(m.groups, device=x.device)[:, None] * width + channels)
            x = x.index_select(1, channels.reshape(-1))
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        x = nn.functional.pad(x, list(m._reversed_padding_repeated_twice), mode=mode)
        kernel, stride, dilation = m.kernel_size, m.stride, m.dilation
        if spatial == 1:
            x = x.unsqueeze(2)
            kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
        cols = nn.functional.unfold(x, kernel, dilation=dilation, stride=stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@dataclass(frozen=True)
class Selector:
    """One entry of ``targets`` / ``ignore``, as llm-compressor reads its own.

    - ``"re:REGEX"``: the regex matched from the start of a layer's full name (``re.match``, as
      llm-compressor and compressed-tensors match theirs: ``"re:.*mlp"`` is every name with
      ``mlp`` in it);
    - anything else: a regex matched against the whole name (``re.fullmatch``, so a plain name
      selects exactly that layer), or the name of the layer's class or of a class it derives
      from (``"Linear"``, ``"Conv1D"``, ``"Conv2d"``).

    Example:
        >>> fc = nn.Linear(2, 2)
        >>> [Selector.parse(t, "targets").matches("mlp.fc", fc)
        ...  for t in ("Linear", "re:mlp", "mlp", "mlp.fc", "Conv2d")]
        [True, True, False, True, False]
    """

    text: str
    regex: re.Pattern
    from_start: bool

    @classmethod
    def parse(cls, text: str, name: str) -> Selector:
        """The selector ``text`` (``name`` is the argument, for the message)."""
        from_start = text.startswith("re:")
        try:
            regex = re.compile(text[3:] if from_start else text)
        except re.error as err:
            raise ValueError(f"{name} pattern {text!r} is not a valid regex: {err}") from None
        return cls(text, regex, from_start)

    def matches_name(self, name: str) -> bool:
        """Whether the regex matches ``name``."""
        match = self.regex.match if self.from_start else self.regex.fullmatch
        return match(name) is not None

    def matches(self, name: str, module: nn.Module) -> bool:
        """Whether ``module`` named ``name`` is selected, by its name or its class."""
        return self.matches_name(name) or (not self.from_start and any(
            c.__name__ == self.text for c in type(module).__mro__
            if issubclass(c, nn.Module)))


def _selectors(value, name: str) -> list[Selector] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(p, str) for p in items):
        raise ValueError(
            f"{name} must be a regex, a 're:' regex or a class name, or a list of them, got "
            f"{type(value).__name__}"
        )
    return [Selector.parse(pattern, name) for pattern in items]


_FORMS = ("a regex of the full name such as 'model\\.layers\\.0\\..*', 're:' and a regex "
          "matched from the name's start such as 're:.*mlp', or a class name such as 'Linear'")


def _unmatched(selector: Selector, name: str, model: nn.Module, layers) -> str:
    modules = dict(model.named_modules())
    hits = [n for n, m in modules.items() if selector.matches(n, m)]
    if not hits:
        examples = list(layers)[:3]
        classes = sorted({type(m).__name__ for m in layers.values()})
        return (
            f"{name} pattern {selector.text!r} matches no module name or class in the model "
            f"(a pattern is {_FORMS}); its prunable layers are named like {examples} and of "
            f"class {', '.join(classes)}"
        )
    layer_hits = [n for n in hits if n in layers]
    if layer_hits:
        return (
            f"{name} pattern {selector.text!r} matches only layers that never run in the "
            f"forward pass on the calibration data: {layer_hits[:5]}"
        )
    kinds = sorted({type(modules[n]).__name__ for n in hits})
    return (
        f"{name} pattern {selector.text!r} matches no prunable layer (it matches {hits[:5]} "
        f"of type {', '.join(kinds)}; prunable: Linear, Conv1d, Conv2d, Conv1D)"
    )


def _shown(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")


def select_targets(
    model: nn.Module,
    executed: list[str],
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
) -> list[Target]:
    """The layers to prune, in the order they run.

    ``targets`` and ``ignore`` take what llm-compressor's take (:class:`Selector`): regexes of
    the full layer name, ``re:`` regexes and class names. Each must select a layer that runs;
    what each selects is logged (logger ``l0prune.targets``, level INFO).

    Args:
        model: the model.
        executed: prunable layer names in the order they first run on a calibration batch
            (layers that never run cannot be pruned from data).
        targets: what chooses the layers; default: every layer that runs except the last
            one to run (the classifier / output head).
        ignore: what removes layers from the choice.

    Returns:
        The :class:`Target` list.

    Raises:
        ValueError: naming a pattern that selects no layer that runs, and why.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> [t.name for t in select_targets(model, ["0", "2"])]
        ['0']
        >>> [t.name for t in select_targets(model, ["0", "2"], "Linear", ignore="re:2")]
        ['0']
    """
    layers = prunable_layers(model)
    selectors, ignores = _selectors(targets, "targets"), _selectors(ignore, "ignore")
    for selector_list, name in ((selectors, "targets"), (ignores, "ignore")):
        for selector in selector_list or ():
            hits = [n for n in executed if selector.matches(n, layers[n])]
            if not hits:
                raise ValueError(_unmatched(selector, name, model, layers))
            log.info("%s %r selects %s", name, selector.text, _shown(hits))
    if selectors is None:
        chosen = executed[:-1]
    else:
        chosen = [n for n in executed if any(s.matches(n, layers[n]) for s in selectors)]
    chosen = [n for n in chosen if not any(s.matches(n, layers[n]) for s in ignores or ())]
    if not chosen:
        raise ValueError(
            "no layer to prune: targets/ignore leave none of the layers that run "
            f"({executed[:8]}{'...' if len(executed) > 8 else ''}); the default skips the last "
            "one (the output head)"
        )
    result = [Target(n, layers[n]) for n in chosen]
    _check_weights(result)
    check_unshared(model, result)
    check_finite(result)
    return result


def _check_weights(targets: list[Target]) -> None:
    owners: dict[int, str] = {}
    for t in targets:
        if hasattr(t.module, "weight_orig") or hasattr(t.module, "weight_mask"):
            raise ValueError(
                f"target {t.name!r} is already pruned (it has weight_orig / weight_mask); call "
                f"torch.nn.utils.prune.remove(module, 'weight') on it first"
            )
        if is_masked(t.module):
            raise ValueError(
                f"target {t.name!r} is already pruned (it holds a mask from an earlier run); "
                f"call l0prune.finalize(model) first to keep its zeros as plain weights"
            )
        if parametrize.is_parametrized(t.module, "weight"):
            raise ValueError(f"target {t.name!r} has a parametrized weight; remove it first")
        key = id(t.module.weight)
        if key in owners:
            raise ValueError(
                f"targets {owners[key]!r} and {t.name!r} share one weight tensor; prune one of them"
            )
        owners[key] = t.name


def _tensor_key(tensor: torch.Tensor) -> tuple:
    """What makes two parameters one tensor: the same memory, offset, shape and strides (tied
    weights are one ``Parameter``; a view of another is caught too)."""
    if tensor.device.type == "meta" or not tensor.numel():
        return ("object", id(tensor))
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
            tuple(tensor.shape), tuple(tensor.stride()))


def check_unshared(model: nn.Module, targets: Sequence[Target]) -> None:
    """Refuse a target whose weight is also a parameter of a module that is not a target.

    Tied weights (a language model's output head and its input embedding) are one tensor:
    pruning the head would prune the embedding too, without a word.

    Args:
        model: the model.
        targets: the run's targets.

    Raises:
        ValueError: naming the target and the other module's parameter.

    Example:
        >>> emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
        >>> head.weight = emb.weight
        >>> model = nn.ModuleDict({"emb": emb, "head": head})
        >>> check_unshared(model, [Target("head", head)])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: target 'head' shares its weight with 'emb.weight', which is not a target ...
    """
    chosen = {t.name for t in targets}
    owners: dict[tuple, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(_tensor_key(parameter), []).append(name)
    for t in targets:
        for name in owners.get(_tensor_key(t.module.weight), []):
            module = name.rpartition(".")[0]
            if module not in chosen:
                raise ValueError(
                    f"target {t.name!r} shares its weight with {name!r}, which is not a target "
                    f"(tied weights): pruning it would prune {module!r} too; leave {t.name!r} "
                    "out (ignore=, --ignore) or untie the weights first"
                )


def check_finite(targets: Sequence[Target]) -> None:
    """Refuse a target whose weight holds NaN or Inf values, naming it (before any work).

    Args:
        targets: the run's targets.

    Raises:
        ValueError: naming the first such target and how many values.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     layer.weight[0, 0] = float("nan")
        >>> check_finite([Target("fc", layer)])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: target 'fc' has 1 NaN or Inf values in its weight; ...
    """
    for t in targets:
        weight = t.module.weight.detach()
        if weight.device.type == "meta":
            continue
        bad = int((~torch.isfinite(weight)).sum())
        if bad:
            raise ValueError(
                f"target {t.name!r} has {bad} NaN or Inf values in its weight; the model is "
                "broken before pruning (check how it was loaded or trained)"
            )


def targets_by_name(model: nn.Module, executed: Sequence[str], sparsity: Mapping[str, float],
                    targets=None, ignore=None) -> list[Target]:
    """The targets of a sparsity given per layer: the dict's keys (or the layers ``targets``
    selects, which must be exactly the keys), each a prunable layer that runs.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 2))
        >>> [t.name for t in targets_by_name(model, ["0", "1"], {"1": 0.5})]
        ['1']
    """
    unknown = [name for name in sparsity if name not in executed]
    if unknown:
        raise ValueError(
            f"sparsity names {unknown}, which are not prunable layers that run in the model "
            f"(those are {executed[:8]}{'...' if len(executed) > 8 else ''})"
        )
    patterns = targets if targets is not None else [re.escape(name) for name in sparsity]
    chosen = select_targets(model, executed, patterns, ignore)
    missing = [t.name for t in chosen if t.name not in sparsity]
    extra = sorted(set(sparsity) - {t.name for t in chosen})
    if missing or extra:
        raise ValueError(
            f"sparsity must have one entry per target: missing {missing}, not targets {extra}"
        )
    return chosen
