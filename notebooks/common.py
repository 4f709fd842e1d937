"""What the notebooks share: the size switch, one torch thread, a few plot settings, and the
closing line that says where and how long a notebook ran.

``L0PRUNE_NOTEBOOK_SIZE=small`` runs every notebook on smaller instances in a fraction of the time
(the test suite does this, ``tests/test_notebooks.py``); unset, or ``full``, gives the sizes of the
committed outputs.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

__all__ = ["SIZE", "Session", "machine", "pick"]

SIZE = os.environ.get("L0PRUNE_NOTEBOOK_SIZE", "full")
if SIZE not in ("full", "small"):
    raise ValueError(f"L0PRUNE_NOTEBOOK_SIZE must be 'full' or 'small', got {SIZE!r}")


def pick(full, small):
    """``full`` at full size, ``small`` under ``L0PRUNE_NOTEBOOK_SIZE=small``."""
    return small if SIZE == "small" else full


def machine() -> str:
    """The processor, cores, Python and torch a notebook runs on, in one line."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}, "
        f"torch {torch.__version__} on {torch.get_num_threads()} thread(s)"
    )


class Session:
    """Started in a notebook's first cell; :meth:`finish` in its last says what the run took.

    One torch thread by default: the timings shown are then comparable across notebooks and with
    the benchmarks (``l0prune bench ... --threads 1``), and a busy machine does not
    distort them as much as it does multi-threaded LAPACK.
    """

    def __init__(self, threads: int = 1, seed: int = 0):
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
        self.started = time.perf_counter()
        print(f"size {SIZE} (set L0PRUNE_NOTEBOOK_SIZE=small for a quick run)")

    def finish(self) -> None:
        """Print the size, the wall time since the first cell, the machine and the date."""
        seconds = time.perf_counter() - self.started
        minutes, rest = divmod(seconds, 60)
        today = datetime.date.today().isoformat()
        print(f"Ran at size {SIZE} in {int(minutes)} min {rest:.0f} s on {today}.")
        print(f"Machine: {machine()}.")
