"""Models built as a stack of repeated blocks: finding the stack, checking it, capturing its input.

A transformer is an embedding (the *prefix*), a stack of blocks each fed the previous block's
output, and a head (the *suffix*). :func:`find_stack` finds the stack generically: the longest
``nn.ModuleList`` of at least two modules of one type (``model.layers``, ``transformer.h``,
``encoder.layer``, ``model.decoder.layers``).

A stack can be run block by block from block 0's inputs only if the model really chains it:
:func:`discover` runs the usual discovery pass (:func:`l0prune.model.statistics.discover`) with
hooks that check that each block runs once, in list order, on the previous block's output, with the
same other arguments (attention mask, position ids or embeddings) as block 0. :func:`capture`
then runs the prefix once per calibration batch (caches off) and keeps block 0's arguments.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.embed = nn.Linear(3, 4)
    ...         self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    ...     def forward(self, x):
    ...         x = self.embed(x)
    ...         for layer in self.layers:
    ...             x = layer(x)
    ...         return x
    >>> net = Net()
    >>> stack = find_stack(net)
    >>> stack.name, len(stack.blocks)
    ('layers', 3)
    >>> inputs = capture(net, stack, [torch.randn(2, 3)], torch.device("cpu"))
    >>> inputs.hidden[0].shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from l0prune.data.batches import attention_mask, to_device

from . import statistics

__all__ = ["BlockInputs", "Stack", "capture", "discover", "find_stack", "run_block"]


@dataclass(eq=False)
class Stack:
    """A model's stack of repeated blocks.

    Attributes:
        name: the ``nn.ModuleList``'s fully qualified name (``""`` for the model itself).
        blocks: the list.

    Example: see the module docstring.
    """

    name: str
    blocks: nn.ModuleList

    def index(self, module: nn.Module) -> int | None:
        """The block holding ``module``, or ``None`` when it is outside the stack."""
        for i, block in enumerate(self.blocks):
            if any(m is module for m in block.modules()):
                return i
        return None


def find_stack(model: nn.Module) -> Stack | None:
    """The longest ``nn.ModuleList`` of two or more modules of one type in ``model``, if any.

    Ties go to the list registered first (the outermost).

    Args:
        model: the model.

    Returns:
        The :class:`Stack`, or ``None``.

    Example:
        >>> find_stack(nn.Sequential(nn.Linear(2, 2))) is None
        True
    """
    best = None
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) >= 2
            and len({type(block) for block in module}) == 1
            and (best is None or len(module) > len(best.blocks))
        ):
            best = Stack(name, module)
    return best


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """A block's main input: its first positional argument, else ``hidden_states=``."""
    if args:
        return args[0]
    return kwargs.get("hidden_states")


def _output(output) -> torch.Tensor:
    """A block's main output: the output itself, or its first item."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _same(a, b) -> bool:
    """Whether two block arguments are equal: tensors by value, containers item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or (type(a) is type(b) and isinstance(a, (int, float, bool, str)) and a == b)


def _rest(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A block's arguments without its main input."""
    if args:
        return args[1:], kwargs
    return (), {k: v for k, v in kwargs.items() if k != "hidden_states"}


def discover(
    model: nn.Module, stack: Stack, batch, device: torch.device
) -> tuple[statistics.Discovery, str | None]:
    """:func:`l0prune.model.statistics.discover`, checking on the way that ``stack`` is a chain.

    Args:
        model: the model (in eval mode).
        stack: its stack.
        batch: one calibration batch.
        device: where the batch goes (the model's device).

    Returns:
        The discovery, and why the stack cannot be run block by block (``None`` if it can).

    Example:
        >>> class Twice(nn.Module):  # both blocks read the input: not a chain
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.heads = nn.ModuleList(nn.Linear(2, 2) for _ in range(2))
        ...     def forward(self, x):
        ...         return self.heads[0](x) + self.heads[1](x)
        >>> net = Twice()
        >>> discover(net, find_stack(net), torch.ones(1, 2), torch.device("cpu"))[1]
        "block 1 does not read block 0's output"
    """
    seen: list[int] = []
    first: list = []
    problems: list[str] = []
    last: dict = {}

    def before(index):
        def hook(module, args, kwargs):
            hidden = _hidden(args, kwargs)
            if hidden is None:
                problems.append(f"block {index} takes no positional input")
            elif index > 0 and "output" in last and not (
                hidden is last["output"] or _same(hidden, last["output"])
            ):
                problems.append(f"block {index} does not read block {index - 1}'s output")
            rest = _rest(args, kwargs)
            if not first:
                first.append(rest)
            elif not _same(rest, first[0]):
                problems.append(f"block {index} takes other arguments than block 0")
            seen.append(index)

        return hook

    def after(module, args, kwargs, output):
        last["output"] = _output(output)

    handles = []
    for i, block in enumerate(stack.blocks):
        handles.append(block.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(block.register_forward_hook(after, with_kwargs=True))
    try:
        found = statistics.discover(model, batch, device)
    finally:
        for handle in handles:
            handle.remove()
    if seen != list(range(len(stack.blocks))):
        problems.insert(0, f"the blocks ran in the order {seen[:8]}, not once each in order")
    return found, (problems[0] if problems else None)


@dataclass
class BlockInputs:
    """Block 0's inputs for every calibration batch, on the run's device.

    Attributes:
        hidden: the main input (hidden states) per batch.
        args: the other positional arguments per batch.
        kwargs: the keyword arguments per batch (caches off).
        masks: each batch's ``attention_mask`` (``None`` without one), to leave padding out
            of the statistics.
        digest: SHA-256 of the calibration batches' tensors (names, dtypes, shapes, values).
        keyword: whether the main input goes in as ``hidden_states=`` (else first positional).

    Example: see the module docstring.
    """

    hidden: list[torch.Tensor]
    args: list[tuple]
    kwargs: list[dict]
    masks: list[torch.Tensor | None]
    digest: str
    keyword: bool = False

    @property
    def bytes(self) -> int:
        """Memory held by the cached inputs (hidden states and other tensors)."""
        total = 0
        seen: set[int] = set()

        def add(value):
            nonlocal total
            if isinstance(value, torch.Tensor) and id(value) not in seen:
                seen.add(id(value))
                total += value.numel() * value.element_size()
            elif isinstance(value, (tuple, list)):
                for item in value:
                    add(item)
            elif isinstance(value, Mapping):
                for item in value.values():
                    add(item)

        add([self.hidden, self.args, self.kwargs, self.masks])
        return total


class _Stop(Exception):
    """Raised by the hook on block 0 to end the forward pass there."""


def _hash(digest, value, key: str = "") -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, Mapping):
        for k in sorted(value):
            _hash(digest, value[k], f"{key}.{k}")
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _hash(digest, item, f"{key}[{i}]")
    else:
        digest.update(f"{key}={value!r}".encode())


def _call(model: nn.Module, batch, device: torch.device):
    """``model`` on ``batch`` (moved to ``device``), with ``use_cache=False`` when it takes it."""
    batch = to_device(batch, device)
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters \
        else {}
    if isinstance(batch, Mapping):
        return model(**{**batch, **extra})
    return model(batch if isinstance(batch, torch.Tensor) else batch[0], **extra)


@torch.no_grad()
def capture(
    model: nn.Module, stack: Stack, data: Iterable, device: torch.device
) -> BlockInputs:
    """Run ``model`` up to block 0 on every batch of ``data``, keeping block 0's arguments.

    One pass over the calibration data; the model runs where it is, the captured tensors are
    moved to ``device`` (the run's device).

    Args:
        model: the model.
        stack: its stack.
        data: calibration batches.
        device: where the captured inputs are kept.

    Returns:
        The :class:`BlockInputs`.

    Example: see the module docstring.
    """
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = BlockInputs([], [], [], [], "")
    digest = hashlib.sha256()

    def hook(module, args, kwargs):
        inputs.keyword = not args
        inputs.hidden.append(to_device(_hidden(args, kwargs), device))
        rest_args, rest_kwargs = _rest(args, kwargs)
        inputs.args.append(to_device(tuple(rest_args), device))
        inputs.kwargs.append(to_device(dict(rest_kwargs), device))
        raise _Stop

    handle = stack.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in data:
            _hash(digest, batch)
            mask = attention_mask(batch)
            inputs.masks.append(None if mask is None else mask.to(device))
            try:
                _call(model, batch, home)
            except _Stop:
                pass
    finally:
        handle.remove()
    inputs.digest = digest.hexdigest()
    return inputs


def run_block(block: nn.Module, inputs: BlockInputs, index: int, hidden: torch.Tensor):
    """``block`` on batch ``index``'s arguments with ``hidden`` as its main input.

    Args:
        block: a block of the stack.
        inputs: the captured inputs (for the other arguments).
        index: the batch.
        hidden: the main input.

    Returns:
        The block's main output.

    Example:
        >>> block = nn.Linear(2, 3)
        >>> inputs = BlockInputs([torch.ones(1, 2)], [()], [{}], [None], "")
        >>> run_block(block, inputs, 0, torch.zeros(1, 2)).shape
        torch.Size([1, 3])
    """
    args, kwargs = inputs.args[index], inputs.kwargs[index]
    if inputs.keyword:
        return _output(block(*args, hidden_states=hidden, **kwargs))
    return _output(block(hidden, *args, **kwargs))
