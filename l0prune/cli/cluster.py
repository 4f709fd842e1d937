"""The dask cluster of a command: ``--workers N`` starts a local one, ``--scheduler ADDRESS``
joins a running one, neither solves in the command's own process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from l0prune.pipeline.executors import join_cluster, local_cluster

__all__ = ["cluster"]


@contextmanager
def cluster(workers: int | None, scheduler: str | None, retries: int | None) -> Iterator:
    """The executor of ``--workers`` / ``--scheduler`` (``None`` for neither), open for the
    length of the block; a scheduler that cannot be reached is one line before any work.

    Args:
        workers: ``--workers``.
        scheduler: ``--scheduler``.
        retries: ``--retries`` (with ``--workers``; default 3).

    Yields:
        A ``dask.distributed.Client`` or ``None``.
    """
    if workers is not None:
        with local_cluster(workers, retries=3 if retries is None else retries) as client:
            yield client
    elif scheduler is not None:
        with join_cluster(scheduler) as client:
            yield client
    else:
        yield None
