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
file. A resumed run takes the finished blocks from the files and recomputes only what follows;
since every block is solved from the same inputs either way, the result is bit for bit that of
a run never interrupted. A file is untrusted: a block is taken only when the model's dense
weights are those it was computed from and it holds a solution of each target under its budget
(:meth:`Checkpoint.load`); the weights kept are counted from its masks. A resume whose settings
or data differ, or whose files do not pass, is refused with one line naming them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from l0prune.io.files import FileLock, save_safetensors, writing
from l0prune.model.masks import pack
from l0prune.model.targets import Target
from l0prune.validate import first_line
from solvers import Budget

from .interface import LayerResult
from .solves import solution_fault

__all__ = ["Checkpoint", "foreign_entry", "remove_checkpoints", "weights_digest"]

SETTINGS = "settings.json"
FORMAT = 1
#: The lock file of a checkpoint folder while a run uses it.
LOCK = ".lock"
#: The names a checkpoint writes in its folder: its files, their temporary names, the
#: temporary files the safetensors library writes through (``.tmpXXXXXX``) and its lock.
_OWN = re.compile(r"\.?(settings\.json|block-\d{4,}\.safetensors)(\.partial)?|\.tmp\w{6}|\.lock")


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

    A run uses it as a context manager: on entry the folder is made if missing and locked (its
    :data:`LOCK` file), so a second run on the same folder is refused while the first one
    lasts; on exit the lock goes, and a run that failed before finishing a block removes what
    it wrote there (nothing is there to resume).

    Args:
        folder: the checkpoint folder (created if missing).
        resume: take the finished blocks found there (refused if the settings differ); when
            ``False`` (or nothing is there) the run starts over and replaces them.

    Attributes:
        found: after :meth:`start`, the finished blocks it found: those a resume takes, or
            those a new run replaces.
        resumed: after :meth:`start`, whether the run goes on from the folder's blocks.

    Example:
        >>> import tempfile
        >>> from torch import nn
        >>> from solvers import Unstructured
        >>> target = Target("fc", nn.Linear(2, 2))
        >>> result = LayerResult.of("fc", 0.1, 0.0, torch.eye(2), torch.eye(2) > 0)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     Checkpoint(folder, resume=False).start({"method": "obs"})
        ...     Checkpoint(folder, resume=False).save(0, [result], "dense")
        ...     again = Checkpoint(folder, resume=True)
        ...     again.start({"method": "obs"})
        ...     again.load(0, [target], "dense", {"fc": Unstructured(k=2)})["fc"].kept
        2
    """

    def __init__(self, folder: str | os.PathLike, resume: bool):
        self.folder = Path(folder)
        self.resume = resume
        self.found, self.resumed = 0, False
        self._lock = FileLock(self.folder / LOCK)
        self._made: list[Path] = []

    def __enter__(self) -> Checkpoint:
        self._made = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._lock.acquire():
            raise ValueError(
                f"checkpoint {self.folder} is in use by another run (process "
                f"{self._lock.holder()}, which holds its {LOCK}); wait for it to end or give "
                "another folder"
            )
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is not None and not any(self.folder.glob("block-*.safetensors")):
                for inner in self.folder.iterdir():  # nothing to resume: the run's files go
                    if inner.name != LOCK and inner.is_file() and _OWN.fullmatch(inner.name):
                        inner.unlink()
        finally:
            self._lock.release()
            if exc_type is not None:
                for made in self._made:
                    _remove_if_empty(made)
        return False

    def _block(self, index: int) -> Path:
        return self.folder / f"block-{index:04d}.safetensors"

    def start(self, settings: Mapping[str, object]) -> None:
        """Check ``settings`` against the folder's (resume) or start the folder afresh.

        Args:
            settings: what the results depend on (JSON values).

        Returns:
            None; :attr:`found` says how many finished blocks were there.

        Raises:
            ValueError: on a resume whose settings differ, naming every setting that does.
        """
        settings = {"format": FORMAT, **settings}
        path = self.folder / SETTINGS
        self.found = len(list(self.folder.glob("block-*.safetensors")))
        if self.resume and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"resume refused: {path} cannot be read "
                                 f"({first_line(err)})") from None
            if not isinstance(saved, dict):
                raise ValueError(f"resume refused: {path} is not a checkpoint's settings")
            differ = [
                _difference(key, saved.get(key), settings.get(key))
                for key in sorted(set(saved) | set(settings)) if saved.get(key) != settings.get(key)
            ]
            if differ:
                raise ValueError(
                    f"resume refused: the checkpoint in {self.folder} was written with other "
                    f"settings or data: {'; '.join(differ)}"
                )
            self.resumed = True
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in (*self.folder.glob("block-*.safetensors"), *self.folder.glob(".*.partial")):
            old.unlink()
        self._write(path, lambda temporary: temporary.write_text(
            json.dumps(settings, indent=2, sort_keys=True) + "\n"
        ))

    def _write(self, path: Path, write) -> None:
        temporary = path.with_name(f".{path.name}.partial")
        with writing(path):
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
        self._write(self._block(index),
                    lambda temporary: save_safetensors(tensors, temporary, metadata))

    def load(
        self, index: int, targets: Sequence[Target], dense: str, budgets: Mapping[str, Budget]
    ) -> dict[str, LayerResult] | None:
        """Block ``index``'s results if it finished in the run resumed, else ``None``.

        The file is untrusted: it must hold exactly a ``weight`` and a ``mask`` per target,
        each a solution of the target under its budget
        (:func:`~l0prune.pipeline.solves.solution_fault`: shape, dtype, boolean mask meeting the
        budget, weight zero off it, finite values). ``kept`` and ``total`` are counted from the
        mask and the layer, not read; the relative error and seconds are read (finite, >= 0).

        Args:
            index: the block.
            targets: its targets.
            dense: :func:`weights_digest` of the model's block now (dense).
            budgets: the sized budget of each target (those of the run's settings).

        Returns:
            A :class:`~l0prune.pipeline.interface.LayerResult` per target name (tensors on the CPU).

        Raises:
            ValueError: when the model's dense weights differ from those the block was
                computed from, or the file is not a solution of the block.
        """
        path = self._block(index)
        if not self.resume or not path.is_file():
            return None
        refused = f"resume refused: {path}"
        try:
            with safe_open(str(path), framework="pt") as file:
                metadata = file.metadata() or {}
            tensors = load_file(path)
            figures = json.loads(metadata.get("results", "null"))
        except (OSError, ValueError) as err:  # json's and safetensors' errors are ValueErrors
            raise ValueError(f"{refused} cannot be read ({first_line(err)})") from None
        if metadata.get("dense") != dense:
            raise ValueError(
                f"resume refused: block {index}'s dense weights differ from those the checkpoint "
                f"in {self.folder} was computed from (another model?)"
            )
        fault = _block_fault(tensors, figures, targets, budgets)
        if fault is not None:
            raise ValueError(f"{refused} {fault} (run again without resuming)")
        by_name = {f["name"]: f for f in figures}
        results = {}
        for t in targets:
            weight, mask = tensors[f"{t.name}.weight"], tensors[f"{t.name}.mask"]
            results[t.name] = LayerResult(
                name=t.name, shape=t.weight_shape, kept=int(mask.sum()), total=t.total,
                relative_error=float(by_name[t.name]["relative_error"]),
                seconds=float(by_name[t.name]["seconds"]), weight=weight, bits=pack(mask),
            )
        return results


def _block_fault(tensors: Mapping[str, torch.Tensor], figures, targets: Sequence[Target],
                 budgets: Mapping[str, Budget]) -> str | None:
    """What makes a block file's contents not the results of ``targets``, or ``None``."""
    names = [t.name for t in targets]
    expected = {f"{n}.{key}" for n in names for key in ("weight", "mask")}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)[0]
        return f"holds tensors other than each target's weight and mask ({odd!r})"
    if not isinstance(figures, list) or not all(isinstance(f, dict) for f in figures) or sorted(
            str(f.get("name")) for f in figures) != sorted(names):
        return "has no figures for exactly its targets"
    for f in figures:
        for key in ("relative_error", "seconds"):
            value = f.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0):
                return f"layer {f['name']!r}: {key} must be a number >= 0, got {value!r}"
    for t in targets:
        weight, mask = tensors[f"{t.name}.weight"], tensors[f"{t.name}.mask"]
        if tuple(weight.shape) != t.weight_shape or tuple(mask.shape) != t.weight_shape:
            return (f"layer {t.name!r}: its weight is {'x'.join(map(str, weight.shape))} and "
                    f"mask {'x'.join(map(str, mask.shape))}, not "
                    f"{'x'.join(map(str, t.weight_shape))}")
        fault = solution_fault(t.matrix(weight), t.matrix(mask), budgets[t.name],
                               t.matrix(t.module.weight).shape, t.module.weight.dtype)
        if fault is not None:
            return f"layer {t.name!r}: {fault}"
    return None
