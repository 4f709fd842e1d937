"""How many CPU threads a run uses: never more than the CPUs this process may use and finds idle.

Torch starts one thread per core it sees. In a container it may see the host's cores rather than
the CPU quota, and its OpenMP threads spin while they wait for each other: on a machine whose
cores are busy with other work a waiting thread burns the time slice its partner needs, and the
layer solvers' many small operations (factorisations, selections) each pay that wait. Measured
(``l0prune bench threads``): a small BERT-class prune took 22x as long on torch's two
threads as on one on a busy two-core machine; with OpenMP threads that sleep instead of spin
(``OMP_WAIT_POLICY=PASSIVE``, which ``import l0prune`` sets unless it is set or torch is
already loaded) 2.4x; and no thread count beats one thread on a core another process keeps busy.

So the default counts the CPUs this process may use, from the scheduler affinity
(``os.sched_getaffinity``) and the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``), leaves out those the one-minute load average says other processes keep
busy, and runs on at most that many threads (at least one).

That cap is for torch's own count. A count the user chose is kept as it is: torch tells no
``set_num_threads`` call from its default, so l0prune takes as the user's any count set through
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and any count other than those torch starts with by
itself, which are the CPUs this process may run on or the whole machine's, logical or physical
(:func:`torch_default_counts`). A ``torch.set_num_threads(n)`` with ``n`` one of those cannot
be told from torch's default and is capped; ``threads=`` (``--threads``) is always kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["available_cpus", "cgroup_cpu_limit", "default_threads", "idle_cpus",
           "set_by_user", "torch_default_counts", "using_threads"]

_CGROUP = Path("/sys/fs/cgroup")
_CPUS = Path("/sys/devices/system/cpu")
_ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cgroup_cpu_limit(root: Path = _CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``quota / period``), ``None`` if unlimited.

    Reads cgroup v2 (``cpu.max``: ``"max 100000"`` or ``"200000 100000"``) or v1
    (``cpu/cpu.cfs_quota_us``, ``-1`` for none, over ``cpu/cpu.cfs_period_us``) under ``root``.

    Example:
        >>> cgroup_cpu_limit(Path("/nonexistent")) is None
        True
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by the cgroup quota (rounded up, >= 1).

    Example:
        >>> available_cpus() >= 1
        True
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(cpus, 1)


def idle_cpus(cpus: int | None = None) -> int:
    """Of ``cpus`` (default :func:`available_cpus`), those not kept busy by other processes:
    ``cpus`` minus the one-minute load average beyond this process's own one (at least 1).

    Example:
        >>> 1 <= idle_cpus() <= available_cpus()
        True
    """
    cpus = available_cpus() if cpus is None else cpus
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cpus
    return max(1, min(cpus, cpus - round(max(load - 1.0, 0.0))))


def _physical_cores(cpus, root: Path = _CPUS) -> int | None:
    """The physical cores among the logical CPUs ``cpus`` (from the kernel's topology), or
    ``None`` where it cannot be read."""
    cores = set()
    for cpu in cpus:
        topology = root / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(cores) or None


def torch_default_counts(root: Path = _CPUS) -> set[int]:
    """The thread counts torch starts with by itself on this machine: the CPUs this process may
    run on and the whole machine's, logical or physical (torch's builds differ in which).

    Example:
        >>> os.cpu_count() in torch_default_counts()
        True
    """
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        mine = set(range(os.cpu_count() or 1))
    every = range(os.cpu_count() or len(mine))
    counts = {len(mine), os.cpu_count() or len(mine), _physical_cores(mine, root),
              _physical_cores(every, root)}
    return {n for n in counts if n}


def set_by_user() -> bool:
    """Whether torch's thread count is the user's: set through ``OMP_NUM_THREADS`` /
    ``MKL_NUM_THREADS``, or none of :func:`torch_default_counts`."""
    if any(os.environ.get(name, "").strip() for name in _ENVIRONMENT):
        return True
    return torch.get_num_threads() not in torch_default_counts()


def default_threads() -> int:
    """The threads a run uses when none are asked for: torch's count, capped by
    :func:`available_cpus` and by :func:`idle_cpus` unless the user set it
    (:func:`set_by_user`).

    Example:
        >>> 1 <= default_threads() <= max(available_cpus(), torch.get_num_threads())
        True
    """
    if set_by_user():
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), idle_cpus()))


@contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """Run the block on ``threads`` torch threads (``None``: :func:`default_threads`), then put
    torch's setting back. Yields the count used.

    Example:
        >>> with using_threads(1) as n:
        ...     torch.get_num_threads() == n == 1
        True
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    before = torch.get_num_threads()
    count = default_threads() if threads is None else threads
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)
