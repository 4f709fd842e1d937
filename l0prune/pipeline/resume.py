"""Resumable block-by-block runs: each finished block's results written as it completes.

A checkpoint folder holds

- ``settings.json``: what the blocks' results depend on: method and options, sequential or
  not, every target's budget, the targets and the stack, the device, the torch version and the
  SHA-256 of the calibration data;
- ``block-NNNN.safetensors`` per finished block: each target's pruned ``weight`` and boolean
  ``mask`` (``NAME.weight``, ``NAME.mask``), with the figures of its
  :class:`~l0prune.pipeline.interface.LayerResult` and the SHA-256 of the block's dense weights in
  the file's metadata.

Files are written to a temporary name and renamed, so a run killed mid-write leaves no torn
file. A resumed run takes the finished blocks from the files (checking that the model's dense
weights are those they were computed from) and recomputes only what follows; since every block
is solved from the same inputs either way, the result is bit for bit that of a run never
interrupted. A resume whose settings or data differ is refused with one line naming them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from l0prune.model.masks import pack
from l0prune.model.targets import Target

from .interface import LayerResult

__all__ = ["Checkpoint", "foreign_entry", "remove_checkpoints", "weights_digest"]

SETTINGS = "settings.json"
FORMAT = 1
#: The names a checkpoint writes in its folder: its files, their temporary names, and the
#: temporary files the safetensors library writes through (``.tmpXXXXXX``).
_OWN = re.compile(r"\.?(settings\.json|block-\d{4,}\.safetensors)(\.partial)?|\.tmp\w{6}")


def weights_digest(targets: Sequence[Target]) -> str:
    """SHA-256 of the targets' weights (names, dtypes, shapes and bytes), to tell models apart.

    Args:
        targets: the layers.

    Returns:
        The hex digest.

    Example:
        >>> from torch import nn
        >>> a = Target("a", nn.Linear(2, 2))
        >>> weights_digest([a]) == weights_digest([a])
        True
    """
    digest = hashlib.sha256()
    for t in targets:
        weight = t.module.weight.detach().cpu().contiguous()
        digest.update(f"{t.name}:{weight.dtype}:{tuple(weight.shape)}".encode())
        digest.update(weight.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def foreign_entry(root: Path, names: Collection[str]) -> str | None:
    """The first entry under ``root`` that no :class:`Checkpoint` wrote, or ``None``.

    ``root`` holds one checkpoint folder per name in ``names`` (a run's ``OUT.partial/METHOD``);
    anything else in it, at any depth, is someone else's.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     (Path(root) / "obs").mkdir()
        ...     _ = (Path(root) / "obs" / "block-0000.safetensors").write_bytes(b"")
        ...     _ = (Path(root) / "thesis.tex").write_text("precious")
        ...     foreign_entry(Path(root), ["obs"])
        'thesis.tex'
    """
    if not root.is_dir():
        return None
    for entry in sorted(root.iterdir()):
        if entry.name not in names or entry.is_symlink() or not entry.is_dir():
            return entry.name
        for inner in sorted(entry.iterdir()):
            if inner.is_symlink() or not inner.is_file() or not _OWN.fullmatch(inner.name):
                return f"{entry.name}/{inner.name}"
    return None


def remove_checkpoints(root: Path, names: Collection[str]) -> None:
    """Remove what :class:`Checkpoint` s wrote under ``root`` (see :func:`foreign_entry`), and
    the folders left empty; anything else stays where it is."""
    if not root.is_dir():
        return
    for name in names:
        folder = root / name
        if folder.is_dir() and not folder.is_symlink():
            for inner in folder.iterdir():
                if inner.is_file() and not inner.is_symlink() and _OWN.fullmatch(inner.name):
                    inner.unlink()
            _remove_if_empty(folder)
    _remove_if_empty(root)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty: something else lives there
        pass


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:12] + "..."


def _difference(key: str, there, here) -> str:
    """``key (THERE there, HERE here)``; for dicts, the first entry that differs."""
    if isinstance(there, dict) and isinstance(here, dict):
        for name in sorted(set(there) | set(here)):
            if there.get(name) != here.get(name):
                return (f"{key} ({name}: {_short(there.get(name))} there, "
                        f"{_short(here.get(name))} here)")
    return f"{key} ({_short(there)} there, {_short(here)} here)"


class Checkpoint:
    """A run's per-block results in ``folder``.

    Args:
        folder: the checkpoint folder (created if missing).
        resume: take the finished blocks found there (refused if the settings differ); when
            ``False`` (or nothing is there) the run starts over and replaces them.

    Example:
        >>> import tempfile
        >>> from torch import nn
        >>> target = Target("fc", nn.Linear(2, 2))
        >>> result = LayerResult.of("fc", 0.1, 0.0, torch.eye(2), torch.eye(2) > 0)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     Checkpoint(folder, resume=False).start({"method": "obs"})
        ...     Checkpoint(folder, resume=False).save(0, [result], "dense")
        ...     again = Checkpoint(folder, resume=True)
        ...     again.start({"method": "obs"})
        ...     again.load(0, [target], "dense")["fc"].kept
        2
    """

    def __init__(self, folder: str | os.PathLike, resume: bool):
        self.folder = Path(folder)
        self.resume = resume

    def _block(self, index: int) -> Path:
        return self.folder / f"block-{index:04d}.safetensors"

    def start(self, settings: Mapping[str, object]) -> None:
        """Check ``settings`` against the folder's (resume) or start the folder afresh.

        Args:
            settings: what the results depend on (JSON values).

        Returns:
            None.

        Raises:
            ValueError: on a resume whose settings differ, naming every setting that does.
        """
        settings = {"format": FORMAT, **settings}
        path = self.folder / SETTINGS
        if self.resume and path.is_file():
            saved = json.loads(path.read_text())
            differ = [
                _difference(key, saved.get(key), settings.get(key))
                for key in sorted(set(saved) | set(settings)) if saved.get(key) != settings.get(key)
            ]
            if differ:
                raise ValueError(
                    f"resume refused: the checkpoint in {self.folder} was written with other "
                    f"settings or data: {'; '.join(differ)}"
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in (*self.folder.glob("block-*.safetensors"), *self.folder.glob(".*.partial")):
            old.unlink()
        self._write(path, lambda temporary: temporary.write_text(
            json.dumps(settings, indent=2, sort_keys=True) + "\n"
        ))

    def _write(self, path: Path, write) -> None:
        temporary = path.with_name(f".{path.name}.partial")
        write(temporary)
        os.replace(temporary, path)

    def save(self, index: int, results: Sequence[LayerResult], dense: str) -> None:
        """Write block ``index``'s results.

        Args:
            index: the block.
            results: its targets' results.
            dense: :func:`weights_digest` of the block's dense targets.

        Returns:
            None.
        """
        tensors, figures = {}, []
        for r in results:
            tensors[f"{r.name}.weight"] = r.weight.detach().cpu().contiguous()
            tensors[f"{r.name}.mask"] = r.mask.detach().cpu().bool().contiguous()
            figures.append({"name": r.name, "kept": r.kept, "total": r.total,
                            "relative_error": r.relative_error, "seconds": r.seconds})
        metadata = {"results": json.dumps(figures), "dense": dense}
        self._write(self._block(index), lambda temporary: save_file(tensors, temporary, metadata))

    def load(
        self, index: int, targets: Sequence[Target], dense: str
    ) -> dict[str, LayerResult] | None:
        """Block ``index``'s results if it finished in the run resumed, else ``None``.

        Args:
            index: the block.
            targets: its targets.
            dense: :func:`weights_digest` of the model's block now (dense).

        Returns:
            A :class:`~l0prune.pipeline.interface.LayerResult` per target name (tensors on the CPU).

        Raises:
            ValueError: when the model's dense weights differ from those the block was
                computed from.
        """
        path = self._block(index)
        if not self.resume or not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata()
        if metadata.get("dense") != dense:
            raise ValueError(
                f"resume refused: block {index}'s dense weights differ from those the checkpoint "
                f"in {self.folder} was computed from (another model?)"
            )
        tensors = load_file(path)
        shapes = {t.name: t.weight_shape for t in targets}
        return {
            f["name"]: LayerResult(
                name=f["name"], shape=shapes[f["name"]], kept=f["kept"], total=f["total"],
                relative_error=f["relative_error"], seconds=f["seconds"],
                weight=tensors[f"{f['name']}.weight"], bits=pack(tensors[f"{f['name']}.mask"]),
            )
            for f in json.loads(metadata["results"])
        }
