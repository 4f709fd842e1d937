"""Where a run's layer solves happen: in this process, on a process pool or on a dask cluster.

:func:`l0prune.prune` takes ``executor=``: ``None`` (here), any
:class:`concurrent.futures.Executor` (a ``ProcessPoolExecutor``, dask's
``Client.get_executor()``) or a ``dask.distributed.Client``. The pruners hand a batch of
independent :class:`LayerTask` s to :class:`LayerSolves`, which runs
:func:`~l0prune.pipeline.solves.solve_target` on each through :func:`solvers.many.run_tasks` and
gives the solutions back in order. Each task ships its weight, its statistics (shared by the
layers that read one input, and sent once to a dask cluster), the budget, the method and its
options; never the model or the data.

:class:`LayerSolves` is the one narrow interface the pipelines hand their tasks to: ``check``
before any work, ``statistics`` (what the pipelines take for the method), then ``submit(tasks)``,
whose result waits for the solutions (an executor starts on them at once, so a block-by-block
run goes on with the next block meanwhile). The problem files of
:mod:`l0prune.io.problem_files` plug in the same way, as a sink that writes the problems
(solving none) and as a source of solutions read back; they are not executors, and
``executor=`` takes executors only.

What goes out together: with ``sequential=False`` every layer (the whole-model path) or every
layer of a block (block by block); with ``sequential=True`` the layers that read one input
(query / key / value, gate / up), whose statistics are taken together; the error curves of the
loss-tolerance search, all at once.

:func:`local_cluster` and :func:`join_cluster` open the dask clusters of the command line's
``--workers N`` and ``--scheduler ADDRESS``; dask is imported only there (``pip install
'l0prune[dask]'``).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from l0prune.model.statistics import BlockDiagonal, Moments
from l0prune.model.targets import Target
from solvers import Budget, LayerProblem, method_info
from solvers.many import is_dask_client, portable, submit_tasks

from .solves import TargetSolution, solve_problems, solve_target, target_problems

__all__ = ["LayerSolves", "LayerTask", "join_cluster", "layer_solves", "local_cluster"]

#: Seconds to wait for a scheduler before giving up (``--scheduler``).
CONNECT_TIMEOUT = 10
#: Where a local cluster's scheduler serves HTTP (health checks; no dashboard): any free local
#: port, not dask's 8787, which another cluster on the machine may hold.
_HTTP = "127.0.0.1:0"


@dataclass
class LayerTask:
    """One target's solves, as the pruners hand them over.

    Attributes:
        name: the layer's name.
        W: its dense weight, ``(groups, out, in)``, contiguous.
        moments: its statistics.
        budgets: sized budgets for one of its problems (one for a run; a curve's several).
        method: a :func:`solvers.methods` name.
        options: the method's options.
        errors_only: keep the errors only (an error curve).
        problems: gives the target's problems here, built once and cached by the pruner (a
            solve in this process uses them; a worker builds its own from the tensors).
    """

    name: str
    W: torch.Tensor
    moments: Moments
    budgets: list[Budget]
    method: str
    options: Mapping
    errors_only: bool = False
    problems: Callable[[], list[LayerProblem]] | None = None


class LayerSolves:
    """Runs batches of :class:`LayerTask` s here or on ``executor`` (see the module docstring).

    Args:
        executor: ``None``, a :class:`concurrent.futures.Executor` or a
            ``dask.distributed.Client`` (checked by :func:`layer_solves`).

    Attributes:
        solves_nothing: whether the solutions given back are stand-ins, not solves (a sink;
            then the run puts the model back when it ends).

    Example:
        >>> from solvers import Unstructured
        >>> X = torch.randn(32, 4, dtype=torch.float64)
        >>> task = LayerTask("fc", torch.randn(1, 2, 4), Moments((X.T @ X / 32)[None]),
        ...                  [Unstructured(k=4)], "obs", {})
        >>> LayerSolves()([task])[0][0].mask.sum().item()
        4
    """

    solves_nothing = False

    def __init__(self, executor=None):
        self.executor = executor

    @property
    def concurrent(self) -> bool:
        """Whether solves run elsewhere while this process goes on (an executor's)."""
        return self.executor is not None

    def statistics(self, method: str, options: Mapping) -> str:
        """The statistics the pipelines take for these solves: what ``method`` reads under
        ``options`` (``"full"``, ``"diagonal"`` or ``"none"``: :func:`solvers.method_info`)."""
        return method_info(method).statistics_for(options)

    def check(self, *, targets: Sequence[Target], sequential: bool, fixed: bool) -> None:
        """Refuse, before any work, a run these solves cannot serve (one ``ValueError``).

        Args:
            targets: the run's targets.
            sequential: the run's ``sequential``.
            fixed: whether the run prunes once at a fixed budget (not the ``alpha`` search).
        """

    def __call__(self, tasks: Sequence[LayerTask],
                 on_done: Callable[[int], None] | None = None) -> list[list[TargetSolution]]:
        """Solve ``tasks``; their solutions in order, where each ``W`` is.

        Args:
            tasks: independent tasks.
            on_done: called with a task's index as each one finishes.

        Returns:
            Per task, one :class:`~l0prune.pipeline.solves.TargetSolution` per budget.
        """
        return self.submit(tasks)(on_done)

    def submit(self, tasks: Sequence[LayerTask]
               ) -> Callable[[Callable[[int], None] | None], list[list[TargetSolution]]]:
        """Hand ``tasks`` over now (an executor starts on them while this process goes on);
        the function returned waits for their solutions, as :meth:`__call__` gives them (here,
        the solves run when it is called)."""
        if self.executor is None:  # each task's problems built when it runs, not all at once
            return submit_tasks(_solve_here, [(t,) for t in tasks], None).gather
        shared: dict[int, torch.Tensor | BlockDiagonal] = {}  # a group's H moved once
        calls = [_arguments(t, None if t.moments.H is None else shared.setdefault(
            id(t.moments.H), t.moments.H.cpu())) for t in tasks]
        submitted = submit_tasks(solve_target, calls, self.executor,
                                 labels=[f"layer {t.name!r}" for t in tasks])
        devices = [t.W.device for t in tasks]

        def solutions(on_done=None) -> list[list[TargetSolution]]:
            found = submitted.gather(on_done)
            for device, per_budget in zip(devices, found, strict=True):
                for s in per_budget:
                    if s.weight is not None:
                        s.weight, s.mask = s.weight.to(device), s.mask.to(device)
            return found

        return solutions


def _solve_here(task: LayerTask) -> list[TargetSolution]:
    """``task`` solved in this process, on its pruner's problems when it has them."""
    problems = task.problems() if task.problems is not None else target_problems(
        task.W, task.moments.H, task.moments.dense_cross(task.W), task.moments.energy)
    return solve_problems(problems, task.budgets, task.method, task.options, task.errors_only)


def _arguments(task: LayerTask, H: torch.Tensor | BlockDiagonal | None) -> tuple:
    """The arguments of :func:`~l0prune.pipeline.solves.solve_target` for ``task`` (its ``H`` on
    the CPU), on the CPU: the sequential problem's ``G`` per layer (``out x in``)."""
    cross, energy = task.moments.dense_cross(task.W), task.moments.energy
    return (task.W.cpu(), H, None if cross is None else cross.cpu(),
            None if energy is None else energy.cpu(), list(task.budgets),
            task.method, dict(task.options), task.errors_only, portable(task.method)[1])


def layer_solves(executor) -> LayerSolves:
    """``executor`` as the :class:`LayerSolves` of a run, checked.

    Args:
        executor: ``None``, a :class:`concurrent.futures.Executor` or a
            ``dask.distributed.Client`` (running).

    Returns:
        The :class:`LayerSolves`.

    Raises:
        ValueError: any other value, or a dask client that is closed or whose scheduler
            cannot be reached.

    Example:
        >>> layer_solves(None).executor is None
        True
    """
    if is_dask_client(executor):
        _check_running(executor)
    elif executor is not None and not isinstance(executor, cf.Executor):
        raise ValueError(
            "executor must be None, a concurrent.futures.Executor (such as a "
            "ProcessPoolExecutor or dask's Client.get_executor()) or a dask.distributed.Client, "
            f"got {type(executor).__name__}"
        )
    return LayerSolves(executor)


def _check_running(client) -> None:
    """A one-line ``ValueError`` unless ``client`` is connected to a scheduler with workers."""
    if client.status != "running":
        raise ValueError(f"executor: the dask client is {client.status}, not running; open a "
                         "new one (dask.distributed.Client(ADDRESS))")
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except Exception as err:  # the comm layer raises OSError, TimeoutError or its own
        raise ValueError(f"executor: the dask scheduler {client.scheduler.address} cannot be "
                         f"reached ({type(err).__name__}: {err})") from None
    if not workers:
        raise ValueError(f"executor: the dask scheduler {client.scheduler.address} has no "
                         "workers; start some (dask worker ADDRESS) or use --workers N")


def _dask():
    try:
        import distributed
    except ImportError:
        raise ValueError(
            "a dask cluster needs dask.distributed: pip install 'l0prune[dask]'"
        ) from None
    return distributed


@contextmanager
def local_cluster(workers: int, *, retries: int = 3) -> Iterator:
    """A dask ``LocalCluster`` of ``workers`` processes with one thread each, and its client.

    Args:
        workers: worker processes, ``>= 1``.
        retries: how many times a task whose worker dies is started again on another (the
            scheduler's ``allowed-failures``) before the run fails naming the layer.

    Yields:
        A ``dask.distributed.Client``; the cluster is closed on leaving.

    Example:
        >>> with local_cluster(1) as client:          # doctest: +SKIP
        ...     l0prune.prune(model, data, sparsity=0.5, executor=client)
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    distributed = _dask()
    import dask

    with _adaptive_allocator(), \
            dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environment()}), \
            distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                scheduler_kwargs={"allowed_failures": retries, "dashboard_address": _HTTP},
            ) as cluster, distributed.Client(cluster) as client:
        yield client


#: Set by dask for its workers (65,536) to give memory back to the system sooner. Setting it
#: turns off glibc's adaptive mmap threshold, so every temporary of more than 128 KiB is mapped
#: and unmapped afresh; a layer solve allocates such temporaries at every iteration: an ADMM
#: solve of a 1536 x 384 layer took 2.4 s on such a worker against 0.9 s in this process, and
#: 1.0 s without the variable.
TRIM = "MALLOC_TRIM_THRESHOLD_"


def _worker_environment() -> dict:
    """The environment dask gives the worker processes it spawns, less :data:`TRIM`."""
    import dask

    found = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    return {k: v for k, v in found.items() if k != TRIM}


@contextmanager
def _adaptive_allocator() -> Iterator[None]:
    """:data:`TRIM` out of this process's environment while the cluster lives, so its workers
    do not inherit it (a dask cluster started before in this process leaves it there), put back
    after."""
    saved = os.environ.pop(TRIM, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[TRIM] = saved


@contextmanager
def join_cluster(address: str, *, timeout: float | None = None) -> Iterator:
    """A client of the running dask scheduler at ``address``, checked to have workers.

    Args:
        address: the scheduler's address, such as ``tcp://10.0.0.5:8786``.
        timeout: seconds to wait for it (default :data:`CONNECT_TIMEOUT`).

    Yields:
        A ``dask.distributed.Client``, closed on leaving (the cluster stays up).

    Raises:
        ValueError: one line when the scheduler cannot be reached or has no workers.
    """
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"scheduler must be an address such as tcp://HOST:8786, got {address!r}")
    distributed = _dask()
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        client = distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"scheduler {address} cannot be reached within {timeout:g} s "
                         f"({first})") from None
    with client:
        _check_running(client)
        yield client
