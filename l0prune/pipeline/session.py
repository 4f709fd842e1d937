"""One frame for every run that changes a model: :func:`l0prune.prune`, :func:`l0prune.gradual`
and :func:`l0prune.train_l0`.

A run takes torch's CPU threads for itself (:func:`~l0prune.pipeline.threads.using_threads`),
reads the user's loaders without moving their generators
(:func:`~l0prune.data.batches.unchanged_generators`), captures the model before anything
changes (a :class:`~l0prune.model.snapshot.Snapshot`, or the lazy
:class:`~l0prune.model.rollback.Rollback` of a block-by-block run), moves it to the run's device,
and at the end either gives the model back in its modes (success) or exactly as it was, on its
own device (any exception, ``KeyboardInterrupt`` included). The report gets the threads, the
wall time and the configuration.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import ExitStack

import torch
from torch import nn

from ..config import PruneConfig
from ..data.batches import unchanged_generators
from ..model.snapshot import Snapshot, move
from ..report import PruneReport
from .threads import using_threads
from .workflow import run_device

__all__ = ["RunSession"]


class RunSession:
    """The frame of one run (see the module docstring); a context manager.

    Args:
        model: the model the run changes.
        config: the run's configuration (its ``threads`` and ``device``).
        data: the loaders the run reads (``None`` entries are passed over).
        snapshot: how to capture the model; default: a :class:`Snapshot` taken on entry.
        move_model: move the model to the run's device on entry (a block-by-block run moves
            one block at a time itself).

    Attributes:
        device: the run's device (the config's, else the model's).
        home: the device the model was on.
        snapshot: the capture.
        threads: the torch threads the run uses.

    Example:
        >>> layer = nn.Linear(4, 4)
        >>> with RunSession(layer, PruneConfig(sparsity=0.5, threads=1), []) as session:
        ...     session.threads, str(session.device)
        (1, 'cpu')
    """

    def __init__(self, model: nn.Module, config: PruneConfig, data: Iterable,
                 snapshot: Snapshot | None = None, *, move_model: bool = True):
        self.model, self.config, self.data = model, config, list(data)
        self.snapshot, self.move_model = snapshot, move_model
        self.home = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = run_device(model, config.device)
        self._stack = ExitStack()
        self.start = self.threads = None

    def __enter__(self) -> RunSession:
        self.start = time.perf_counter()
        self.threads = self._stack.enter_context(using_threads(self.config.threads))
        self._stack.enter_context(unchanged_generators(*self.data))
        try:
            if self.snapshot is None:
                self.snapshot = Snapshot(self.model)  # before any move: the model as given
            if self.move_model:
                self.move_model_to_device()
            self.model.eval()
        except BaseException:
            self.__exit__(*(None,) * 3, failed=True)
            raise
        return self

    def move_model_to_device(self) -> None:
        """Move the model to the run's device (a run that turned out to need the whole model
        there; the snapshot holds it as it was)."""
        move(self.model, self.device)

    def on_exit(self, callback, *args) -> None:
        """Call ``callback(*args)`` when the run ends, however it ends."""
        self._stack.callback(callback, *args)

    def enter(self, context):
        """Enter the context manager ``context`` now and exit it when the run ends (told of
        the failure, if the run fails); returns what it gives on entry."""
        return self._stack.enter_context(context)

    def __exit__(self, exc_type, exc, tb, failed: bool = False) -> bool:
        try:
            if (exc_type is not None or failed) and self.snapshot is not None:
                self.snapshot.restore()
        finally:
            self._stack.__exit__(exc_type, exc, tb)  # each context told how the run ended
        if exc_type is None and not failed:
            self.snapshot.restore_modes()
        return False

    def finish(self, report: PruneReport, unused: tuple[str, ...] = ()) -> PruneReport:
        """``report`` with the run's threads, wall time so far and configuration (less the
        ``unused`` settings, which the run does not read)."""
        report.threads = self.threads
        report.seconds = time.perf_counter() - self.start
        report.config = {k: v for k, v in self.config.to_dict().items() if k not in unused}
        return report
