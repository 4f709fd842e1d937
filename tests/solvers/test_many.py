"""``solve_many``: the solutions of ``solve`` in the order given, here, on a process pool and on
a dask cluster; a shared ``H`` goes to the cluster once."""

import concurrent.futures as cf
import multiprocessing
import os

import pytest
import torch

from solvers import NM, LayerProblem, register_method, solve
from solvers.many import WorkerLost, run_tasks, solve_many

from ..conftest import correlated_inputs


def _problems():
    """Three problems sharing one H (one input), one with its own, of different shapes."""
    X = correlated_inputs(128, 16, seed=3)
    H = X.T @ X / 128
    g = torch.Generator().manual_seed(4)
    shared = [LayerProblem(torch.randn(rows, 16, generator=g, dtype=torch.float64), H,
                           sparsity=0.5) for rows in (8, 12, 4)]
    Y = correlated_inputs(64, 8, seed=5)
    own = LayerProblem(torch.randn(6, 8, generator=g, dtype=torch.float64), Y.T @ Y / 64,
                       budget=NM(2, 4))
    return [*shared, own]


def _assert_same(found, expected):
    assert len(found) == len(expected)
    for a, b in zip(found, expected, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.mask, b.mask)
        assert a.objective == b.objective and a.relative_error == b.relative_error


def test_in_process_gives_the_solutions_of_solve_in_order():
    problems = _problems()
    expected = [solve(p, "iht", max_iter=20) for p in problems]
    _assert_same(solve_many(problems, "iht", progress=False, max_iter=20), expected)


def test_a_dask_cluster_gives_the_same_bits_and_sends_a_shared_h_once(dask_client, monkeypatch):
    problems = _problems()
    expected = [solve(p, "admm", max_iter=20) for p in problems]
    submitted = []
    submit = type(dask_client).submit

    def counting(self, fn, *args, **kwargs):
        submitted.append([a for a in args if isinstance(a, torch.Tensor)])
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(type(dask_client), "submit", counting)
    found = solve_many(problems, "admm", dask_client, progress=False, max_iter=20)
    _assert_same(found, expected)
    # The shared H goes once (as its own task); the one-off H travels with its problem.
    shared_H = problems[0].H
    assert sum(any(t is shared_H for t in tensors) for tensors in submitted) == 1
    assert len(submitted) == 1 + len(problems)


def test_a_process_pool_gives_the_same_bits(process_pool):
    problems = _problems()
    expected = [solve(p, "obs") for p in problems]
    _assert_same(solve_many(problems, "obs", process_pool, progress=False), expected)


def test_bad_input_is_refused_before_any_solve():
    problems = _problems()
    with pytest.raises(ValueError, match="method must be one of"):
        solve_many(problems, "nosuch", progress=False)
    with pytest.raises(ValueError, match=r"problems\[1\] must be a LayerProblem, got str"):
        solve_many([problems[0], "W"], "obs", progress=False)
    with pytest.raises(ValueError, match=r"problems\[0\].budget=.* has no size"):
        solve_many([LayerProblem(torch.randn(2, 4), None)], "obs", progress=False)
    with pytest.raises(ValueError, match="executor must be None"):
        run_tasks(pow, [(2, 3)], executor="cluster")


def test_an_error_in_a_task_names_it():
    with pytest.raises(ZeroDivisionError) as info:
        run_tasks(divmod, [(1, 1), (1, 0)], labels=["first", "second"])
    assert not hasattr(info.value, "__notes__")  # here it is raised as it is
    with cf.ThreadPoolExecutor(1) as pool, pytest.raises(ZeroDivisionError) as info:
        run_tasks(divmod, [(1, 1), (1, 0)], pool, labels=["first", "second"])
    assert info.value.__notes__ == ["(while running second)"]


def test_a_worker_that_dies_in_a_process_pool_is_named():
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(WorkerLost) as info:
            run_tasks(os._exit, [(3,)], pool, labels=["layer 'fc1'"])
    assert info.value.label == "layer 'fc1'"
    assert str(info.value).startswith("layer 'fc1': its worker died or the cluster went away")
    assert "BrokenProcessPool" in str(info.value) and len(str(info.value).splitlines()) == 1


def test_a_method_registered_here_is_registered_on_the_workers(dask_client):
    def keep_largest_rows(problem):
        """Keeps the budget's count of the largest |W| (a stand-in for a user's method)."""
        mask = problem.budget.select(problem.W.abs())
        return problem.W * mask, mask, {"iterations": 0, "converged": True, "history": []}

    register_method("keep_largest_rows_cluster_test", keep_largest_rows)
    problems = _problems()
    expected = [solve(p, "keep_largest_rows_cluster_test") for p in problems]
    found = solve_many(problems, "keep_largest_rows_cluster_test", dask_client, progress=False)
    _assert_same(found, expected)
