"""Progress output on stderr: a tqdm bar on a terminal, a few plain lines elsewhere.

A bar redraws itself with carriage returns and cursor movements, which a log file or a pipe
keeps as noise. There each stage of a run (the alpha search, the layers of a fixed-sparsity
run, the blocks of a block-by-block one, the solves of a problem folder) writes one line when
it ends, such as ``alpha search: 16 trials`` or ``blocks: 12 / 12 blocks``, and while it runs
at most one line every :data:`EVERY` seconds, with its count and figures (``alpha search:
trial 3 (stage uniform, sparsity 0.500, ratio 1.0123)``); a display opened inside another (the
layers of each trial) is part of its stage and writes nothing.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

__all__ = ["EVERY", "Lines", "note", "progress"]

#: In a log or a pipe, the fewest seconds between two progress lines of a stage that runs.
EVERY = 30.0


def _plural(unit: str, count: int) -> str:
    return unit if count == 1 else f"{unit}s"


class Lines:
    """The part of tqdm's interface the runs use, printing the few lines of a log (see the
    module docstring).

    Args:
        desc: what is counted.
        unit: one step.
        total: the number of steps, when known.
        file: where the lines go (default: stderr).
        every: the fewest seconds between two lines while it runs (default :data:`EVERY`).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with Lines("trials", "trial", file=out) as outer:
        ...     for _ in range(2):
        ...         with Lines("layers", "layer", total=3, file=out) as inner:
        ...             for _ in range(3):
        ...                 inner.update()
        ...         outer.set_postfix(ratio="1.01"); outer.update()
        >>> out.getvalue().splitlines()
        ['trials: 2 trials']
        >>> out = io.StringIO()
        >>> with Lines("layers", "layer", total=2, file=out, every=0) as bar:
        ...     bar.update(); bar.set_postfix(name="fc"); bar.update()
        >>> out.getvalue().splitlines()
        ['layers: layer 1 / 2', 'layers: layer 2 / 2 (name fc)', 'layers: 2 / 2 layers']
    """

    #: Displays open now: one opened inside another is silent.
    _open = 0

    def __init__(self, desc: str, unit: str, total: int | None = None, file=None,
                 every: float | None = None):
        self.desc, self.unit, self.total, self.n = desc, unit, total, 0
        self.file = file
        self.every = EVERY if every is None else every
        self.postfix: dict[str, object] = {}
        self.silent, self.last = False, 0.0

    def __enter__(self) -> Lines:
        self.silent = Lines._open > 0
        Lines._open += 1
        self.last = time.monotonic()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        Lines._open -= 1
        if exc_type is None and not self.silent:
            count = f"{self.n} / {self.total}" if self.total is not None else str(self.n)
            self._print(f"{self.desc}: {count} "
                        f"{_plural(self.unit, self.n if self.total is None else self.total)}")

    def set_postfix(self, **values) -> None:
        """Figures shown with the next step's line."""
        self.postfix = values

    def update(self, n: int = 1) -> None:
        """Count ``n`` steps; print the step's line if the last line is :attr:`every` seconds
        old."""
        self.n += n
        now = time.monotonic()
        if self.silent or now - self.last < self.every:
            return
        self.last = now
        count = f"{self.n} / {self.total}" if self.total is not None else str(self.n)
        extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        self._print(f"{self.desc}: {self.unit} {count}" + (f" ({extra})" if extra else ""))

    def _print(self, line: str) -> None:
        print(line, file=self.file if self.file is not None else sys.stderr, flush=True)


def progress(desc: str, unit: str, *, total: int | None = None, enabled: bool = True,
             transient: bool = False):
    """A progress display for ``total`` steps (``None``: unknown) of ``unit``.

    Args:
        desc: what is counted, such as ``"layers"``.
        unit: one step, singular, such as ``"trial"``.
        total: the number of steps, when known.
        enabled: ``False`` shows nothing.
        transient: on a terminal, the bar disappears when done.

    Returns:
        A context manager with ``update()`` and ``set_postfix(**figures)``: a tqdm bar when
        stderr is a terminal, else :class:`Lines` (the few lines of a log).
    """
    if enabled and not sys.stderr.isatty():
        return Lines(desc, unit, total)
    return tqdm(total=total, desc=desc, unit=f" {unit}s", leave=not transient,
                disable=not enabled)


def note(message: str, enabled: bool = True) -> None:
    """One line of news on stderr (blocks taken from a checkpoint, a run starting again),
    written so that a progress bar on a terminal is redrawn below it, not broken.

    Args:
        message: the line.
        enabled: ``False`` writes nothing (a run without progress output).
    """
    if enabled:
        tqdm.write(message, file=sys.stderr)
