"""Many independent solves at once: in this process, on a ``concurrent.futures`` executor or on
a dask cluster.

:func:`run_tasks` is the seam: ``fn(*args)`` for each argument tuple, submitted together and
gathered in the order given; :func:`submit_tasks` submits without waiting, so that a caller
keeps working (the next block's statistics) while the executor solves, and gathers later. The
executor is

- ``None``: the calls run here, one after the other;
- any :class:`concurrent.futures.Executor` (a ``ProcessPoolExecutor``, dask's
  ``Client.get_executor()``): every call ships its own arguments;
- a ``dask.distributed.Client``: a tensor argument that several calls share (layers that read
  the same input share ``H``) is sent to the cluster once, as a task of its own whose result
  the calls take; every other argument travels with its call.

A task sets one torch thread in its process before it runs (a worker that runs several tasks
side by side must not oversubscribe its cores, and one thread gives the same sums, so the same
bits, on every worker). A worker that dies while running a task is a :class:`WorkerLost` naming
the task; an exception raised by ``fn`` itself comes back unchanged, with a note naming the
task. On either, the tasks not yet finished are cancelled before the error propagates.

:func:`solve_many` solves a list of :class:`~solvers.problem.LayerProblem` this way.

This module imports neither dask nor anything of ``l0prune``: a dask client is recognised by
its class, whose module the caller has already imported.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import sys
import uuid
import warnings
from collections.abc import Callable, Sequence

import torch

from .api import solve
from .problem import LayerProblem
from .registry import MethodInfo, method_function, method_info, methods, register_method
from .solution import Solution

__all__ = ["Submitted", "WorkerLost", "ensure_method", "is_dask_client", "portable",
           "run_tasks", "solve_many", "submit_tasks"]


class WorkerLost(RuntimeError):
    """A task's worker died (or the pool or cluster went away) before it returned.

    Attributes:
        label: the task's name.
    """

    def __init__(self, label: str, cause: BaseException):
        self.label = label
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        super().__init__(
            f"{label}: its worker died or the cluster went away before it finished "
            f"({type(cause).__name__}{': ' + reason if reason else ''})"
        )


def is_dask_client(executor: object) -> bool:
    """Whether ``executor`` is a ``dask.distributed.Client`` (without importing dask).

    Example:
        >>> is_dask_client(None)
        False
    """
    distributed = sys.modules.get("distributed")
    return distributed is not None and isinstance(executor, distributed.Client)


def _lost(err: BaseException) -> bool:
    """Whether ``err`` says the worker or the executor went away, rather than the task failing."""
    if isinstance(err, (cf.BrokenExecutor, cf.CancelledError)):
        return True
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"KilledWorker", "CancelledError", "CommClosedError"})


def on_worker(fn: Callable, *args):
    """``fn(*args)`` with one torch thread in this process (what every submitted task runs)."""
    torch.set_num_threads(1)
    return fn(*args)


def run_tasks(
    fn: Callable,
    calls: Sequence[tuple],
    executor=None,
    *,
    labels: Sequence[str] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list:
    """``[fn(*args) for args in calls]``, on ``executor`` (see the module docstring).

    Args:
        fn: a module-level function (it is pickled by reference for an executor).
        calls: one argument tuple per task.
        executor: ``None``, a :class:`concurrent.futures.Executor` or a
            ``dask.distributed.Client``.
        labels: a name per task for errors and the cluster's dashboard (default ``task i``).
        on_done: called with a task's index as each one finishes (in any order).

    Returns:
        The results, in the order of ``calls``.

    Raises:
        WorkerLost: a task's worker died (or the pool broke, or the client closed).
        Exception: whatever ``fn`` raised, with a note naming the task.

    Example:
        >>> run_tasks(pow, [(2, 3), (3, 2)])
        [8, 9]
    """
    return submit_tasks(fn, calls, executor, labels=labels).gather(on_done)


class Submitted:
    """Tasks handed to an executor (or kept to run here): :meth:`gather` waits for them.

    Example:
        >>> submit_tasks(pow, [(2, 3), (3, 2)]).gather()
        [8, 9]
    """

    def __init__(self, gather: Callable):
        self._gather = gather

    def gather(self, on_done: Callable[[int], None] | None = None) -> list:
        """The results in the order of the calls (see :func:`run_tasks`); ``on_done`` is called
        with a task's index as each one finishes. Without an executor the calls run now."""
        return self._gather(on_done or (lambda index: None))


def submit_tasks(
    fn: Callable,
    calls: Sequence[tuple],
    executor=None,
    *,
    labels: Sequence[str] | None = None,
) -> Submitted:
    """:func:`run_tasks` without the wait: the tasks go to ``executor`` now and run there while
    the caller goes on; :meth:`Submitted.gather` collects them. Without an executor nothing
    runs until then."""
    labels = list(labels) if labels is not None else [f"task {i}" for i in range(len(calls))]
    calls = list(calls)
    if executor is None:
        def here(done):
            results = []
            for index, args in enumerate(calls):
                results.append(fn(*args))
                done(index)
            return results

        return Submitted(here)
    if is_dask_client(executor):
        return _on_dask(executor, fn, calls, labels)
    if isinstance(executor, cf.Executor):
        futures = [executor.submit(on_worker, fn, *args) for args in calls]
        return Submitted(lambda done: _gather(futures, cf.as_completed(futures), labels, done,
                                              lambda: [f.cancel() for f in futures]))
    raise ValueError(
        "executor must be None, a concurrent.futures.Executor or a dask.distributed.Client, "
        f"got {type(executor).__name__}"
    )


def _on_dask(client, fn: Callable, calls: Sequence[tuple], labels: Sequence[str]) -> Submitted:
    """Send each tensor shared by several calls once, submit every call, gather in order.

    A shared tensor goes out as a task of its own that returns it (not ``Client.scatter``):
    the scheduler keeps what it needs to run that task again, so a worker that dies holding the
    tensor costs a re-send, not the run (scattered data dies with its worker).
    """
    from distributed import as_completed

    uses: dict[int, int] = {}
    for args in calls:
        for a in args:
            if isinstance(a, torch.Tensor):
                uses[id(a)] = uses.get(id(a), 0) + 1
    run = uuid.uuid4().hex[:8]
    sent = {}
    for args in calls:
        for a in args:
            if isinstance(a, torch.Tensor) and uses[id(a)] > 1 and id(a) not in sent:
                sent[id(a)] = client.submit(_same, a, key=f"shared-{run}-{len(sent)}", pure=False)
    with warnings.catch_warnings():  # large arguments travel with their tasks on purpose
        warnings.filterwarnings("ignore", message="Sending large graph")
        futures = [
            client.submit(on_worker, fn, *(sent.get(id(a), a) for a in args),
                          key=f"{_key(label)}-{run}-{i}", pure=False)
            for i, (args, label) in enumerate(zip(calls, labels, strict=True))
        ]
    del sent  # the tasks hold the shared data now; it is released with them
    return Submitted(lambda done: _gather(futures, as_completed(futures), labels, done,
                                          functools.partial(client.cancel, futures)))


def _same(value):
    """A shared argument, as a task's result."""
    return value


def _key(label: str) -> str:
    """A dask task key made from a label (letters, digits, ``.-_`` only)."""
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in label)


def _gather(futures: list, finished, labels: Sequence[str], done, cancel) -> list:
    """The results of ``futures`` in order, as ``finished`` yields them; on the first failure,
    ``cancel()`` the rest and raise."""
    index = {id(f): i for i, f in enumerate(futures)}
    try:
        for future in finished:
            i = index[id(future)]
            if future.cancelled():  # by someone else: a closed client, a restarted cluster
                err = cf.CancelledError("the task was cancelled")
            else:
                err = future.exception()
            if err is not None:
                named = _named(err, labels[i])
                if named is err:
                    raise err
                raise named from err
            done(i)
        return [f.result() for f in futures]
    except BaseException:
        cancel()
        raise


def _named(err: BaseException, label: str) -> BaseException:
    if _lost(err):
        return WorkerLost(label, err)
    if hasattr(err, "add_note"):
        err.add_note(f"(while running {label})")
    return err


def portable(method: str) -> tuple[str, tuple[Callable, MethodInfo] | None]:
    """``(method, (fn, info))`` to ship to a worker: the function of a method added by
    :func:`~solvers.registry.register_method` and its registry entry (a worker's registry holds the
    built-ins only; the function is pickled by reference, or by value on dask for one defined
    in a script), ``None`` for a built-in.

    Example:
        >>> portable("obs")
        ('obs', None)
    """
    fn = method_function(method)
    return method, (None if fn.__module__.startswith("solvers.") else (fn, method_info(method)))


def ensure_method(method: str, shipped: tuple[Callable, MethodInfo] | None) -> None:
    """Register a shipped method here when it is not known yet (see :func:`portable`)."""
    if shipped is not None and method not in methods():
        fn, info = shipped
        register_method(method, fn, statistics=info.statistics, seed=info.seed,
                        start=info.start)


def _packed(problem: LayerProblem) -> tuple[dict, torch.Tensor | None]:
    """A problem as ``(state without H and its cache, H)``: ``H`` (a matrix or a diagonal's
    vector) travels on its own, once for every problem that shares it; cached factorisations
    are recomputed where it is solved."""
    state = {k: v for k, v in vars(problem).items() if k not in ("_H", "_diagonal", "_cache")}
    return state, problem._diagonal if problem.diagonal else problem._H


def _unpacked(state: dict, H: torch.Tensor | None) -> LayerProblem:
    """The problem of :func:`_packed`, rebuilt without checking again (it was checked where it
    was made)."""
    problem = object.__new__(LayerProblem)
    problem.__dict__.update(state)
    vector = H is not None and H.ndim == 1
    problem._H, problem._diagonal = (None, H) if vector else (H, None)
    problem._cache = {}
    return problem


def _one_of(H: torch.Tensor | None, seen: list[torch.Tensor]) -> torch.Tensor | None:
    """``H``, or an equal tensor of ``seen`` (every problem keeps its own symmetrised copy of
    ``H``: the same values become one object, sent once)."""
    if H is None:
        return None
    for other in seen:
        if other.shape == H.shape and other.dtype == H.dtype and torch.equal(other, H):
            return other
    seen.append(H)
    return H


def _solve_packed(state: dict, H: torch.Tensor | None, method: tuple[str, Callable | None],
                  options: dict) -> Solution:
    ensure_method(*method)
    return solve(_unpacked(state, H), method[0], **options).detach()


def solve_many(
    problems: Sequence[LayerProblem],
    method: str = "admm",
    executor=None,
    *,
    progress: bool = True,
    **options,
) -> list[Solution]:
    """Solve every problem with ``method``, on ``executor`` (see the module docstring).

    Problems with equal ``H`` (layers that read one input) send it once to a dask cluster. On
    the CPU the solutions are those of :func:`~solvers.api.solve` in a process with one torch
    thread, bit for bit, wherever they run.

    Args:
        problems: :class:`~solvers.problem.LayerProblem` s with sized budgets.
        method: one of :func:`~solvers.registry.methods` (built-in; a registered one must be
            registered in the workers too).
        executor: ``None`` (here), a :class:`concurrent.futures.Executor` or a
            ``dask.distributed.Client``.
        progress: a progress bar on stderr as the solves finish.
        **options: :func:`~solvers.api.solve`'s options (``certify``, ``bound``) and the
            method's.

    Returns:
        One :class:`~solvers.solution.Solution` per problem, in the order given.

    Example:
        >>> import torch
        >>> from solvers import LayerProblem
        >>> problems = [LayerProblem(torch.randn(4, 8), None, sparsity=0.5) for _ in range(3)]
        >>> [s.sparsity for s in solve_many(problems, "magnitude", progress=False)]
        [0.5, 0.5, 0.5]
    """
    problems = list(problems)
    shipped = portable(method)
    for i, problem in enumerate(problems):
        if not isinstance(problem, LayerProblem):
            raise ValueError(
                f"problems[{i}] must be a LayerProblem, got {type(problem).__name__}"
            )
        if not problem.budget.sized:
            raise ValueError(
                f"problems[{i}].budget={problem.budget!r} has no size: give sparsity= or k="
            )
    from tqdm import tqdm

    calls, seen = [], []
    for problem in problems:
        state, H = _packed(problem)
        calls.append((state, _one_of(H, seen), shipped, options))
    with tqdm(total=len(problems), desc="solves", unit=" problems", disable=not progress) as bar:
        return run_tasks(_solve_packed, calls, executor,
                         labels=[f"problem {i}" for i in range(len(problems))],
                         on_done=lambda i: bar.update())
