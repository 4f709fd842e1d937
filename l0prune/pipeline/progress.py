"""Progress output on stderr: a tqdm bar on a terminal, one plain line per step elsewhere.

A bar redraws itself with carriage returns and cursor movements, which a log file or a pipe
keeps as noise; there each step is one line such as ``alpha search: trial 3 (stage uniform,
sparsity 0.500, ratio 1.0123)`` or ``layers: 2 / 5``.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["Lines", "note", "progress"]


class Lines:
    """The part of tqdm's interface the runs use, printing one line per :meth:`update`.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with Lines("layers", "layer", total=2, file=out) as bar:
        ...     bar.update(); bar.set_postfix(name="fc"); bar.update()
        >>> out.getvalue().splitlines()
        ['layers: layer 1 / 2', 'layers: layer 2 / 2 (name fc)']
    """

    def __init__(self, desc: str, unit: str, total: int | None = None, file=None):
        self.desc, self.unit, self.total, self.n = desc, unit, total, 0
        self.file = file
        self.postfix: dict[str, object] = {}

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def set_postfix(self, **values) -> None:
        """Figures shown with the next step's line."""
        self.postfix = values

    def update(self, n: int = 1) -> None:
        """Count ``n`` steps and print the line."""
        self.n += n
        count = f"{self.n} / {self.total}" if self.total is not None else str(self.n)
        extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        line = f"{self.desc}: {self.unit} {count}" + (f" ({extra})" if extra else "")
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
        stderr is a terminal, else :class:`Lines`.
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
