"""A :class:`~l0prune.model.snapshot.Snapshot` whose copies are taken lazily, part by part.

Block-by-block pruning changes one block at a time, so it needs no copy of the whole model up
front: :class:`Rollback` records every module's structure, hooks and mode at once (no tensor is
copied) and the values of a part of the model only when :meth:`Rollback.capture` is called on
it, just before that part changes. The copies are taken where the part is then (the CPU, for a
model kept there while its blocks visit the device). :meth:`Rollback.restore` puts back
everything captured, so a failure in block ``k`` still leaves the model exactly as it was.

By the end of a run the copies add up to the parts that changed (every block pruned): a second
copy of the stack in memory. With a ``folder``, :meth:`Rollback.release` moves a finished
part's copies to a safetensors file there, so that memory holds the copy of one block at a time;
:meth:`Rollback.value` and :meth:`Rollback.restore` read them back.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from l0prune.io.files import save_safetensors

from .snapshot import Snapshot, _ModuleState, put_back

__all__ = ["Rollback"]


class Rollback(Snapshot):
    """A snapshot of ``model``'s structure now and of its parts' values on demand.

    Args:
        model: the model.
        folder: where :meth:`release` writes copies (an existing folder), or ``None`` to keep
            them all in memory.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> rollback = Rollback(model)
        >>> rollback.capture(model[1])
        >>> with torch.no_grad():
        ...     _ = model[1].weight.zero_()
        >>> rollback.restore(); bool(model[1].weight.abs().sum() > 0)
        True
    """

    def __init__(self, model: nn.Module, folder: str | os.PathLike | None = None):
        self.modules = [(m, _ModuleState(m)) for m in model.modules()]
        self.values = {}
        self.folder = None if folder is None else Path(folder)
        self.released: dict[int, tuple[Path, torch.Tensor, bool, torch.Tensor | None]] = {}

    def _tensors(self, part: nn.Module) -> list[torch.Tensor]:
        return [*part.parameters(), *part.buffers()]

    def capture(self, part: nn.Module) -> None:
        """Copy the parameters and buffers of ``part`` (a submodule) not captured yet.

        Args:
            part: the part about to change (a block, a layer, or the whole model).

        Returns:
            None.
        """
        for tensor in self._tensors(part):
            if id(tensor) not in self.values and id(tensor) not in self.released:
                grad = None if tensor.grad is None else tensor.grad.detach().clone()
                self.values[id(tensor)] = (
                    tensor, tensor.detach().clone(), tensor.requires_grad, grad
                )

    def release(self, part: nn.Module) -> None:
        """Move ``part``'s copies to a file in the folder (nothing happens without a folder).

        Args:
            part: a captured part that is done changing for now.

        Returns:
            None.

        Example:
            >>> import tempfile
            >>> layer = nn.Linear(2, 2)
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     rollback = Rollback(layer, folder)
            ...     rollback.capture(layer); rollback.release(layer)
            ...     with torch.no_grad():
            ...         _ = layer.weight.zero_()
            ...     rollback.restore(); bool(layer.weight.abs().sum() > 0)
            True
        """
        keys = [id(t) for t in self._tensors(part) if id(t) in self.values]
        if self.folder is None or not keys:
            return
        path = self.folder / f"part-{len(set(f for f, *_ in self.released.values())):05d}.st"
        save_safetensors({str(key): self.values[key][1] for key in keys}, path)
        for key in keys:
            tensor, _, requires_grad, grad = self.values.pop(key)
            self.released[key] = (path, tensor, requires_grad, grad)

    def value(self, tensor: torch.Tensor) -> torch.Tensor:
        """The captured value of ``tensor`` (read back from its file if released).

        Args:
            tensor: a parameter or buffer captured.

        Returns:
            Its value at capture time.
        """
        if id(tensor) in self.values:
            return self.values[id(tensor)][1]
        path = self.released[id(tensor)][0]
        with safe_open(str(path), framework="pt") as file:
            return file.get_tensor(str(id(tensor)))

    def restore(self, *, devices: bool = True) -> None:
        """Put the model back as captured, the released copies file by file.

        Args:
            devices: as in :meth:`Snapshot.restore <l0prune.model.snapshot.Snapshot.restore>`.

        Returns:
            None.
        """
        super().restore(devices=devices)
        paths: dict[Path, list[int]] = {}
        for key, (path, *_) in self.released.items():
            paths.setdefault(path, []).append(key)
        for path, keys in paths.items():
            saved = load_file(path)
            for key in keys:
                _, tensor, requires_grad, grad = self.released[key]
                put_back(tensor, saved[str(key)], requires_grad, grad, devices=devices)
