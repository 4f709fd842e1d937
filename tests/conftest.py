"""Shared fixtures: small layer problems with a realistic, correlated H."""

import pytest
import torch


def correlated_inputs(n: int, d: int, seed: int = 0, decay: float = 0.9) -> torch.Tensor:
    """``n x d`` inputs with a decaying spectrum and correlated columns."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    scales = decay ** torch.arange(d, dtype=torch.float64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ basis.T + 0.3 * (
        torch.randn(n, 1, generator=g, dtype=torch.float64)
    )


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread: the tests run many small LAPACK calls (``eigh``, batched Cholesky),
    which multi-threaded OpenMP slows down by orders of magnitude on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def layer():
    """A 24 x 32 layer with a correlated H (float64)."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(24, 32, generator=g, dtype=torch.float64)
    X = correlated_inputs(256, 32, seed=2)
    return W, X.T @ X / X.shape[0]


@pytest.fixture(scope="session")
def dask_client():
    """A dask ``LocalCluster`` of two worker processes with one thread each, started once for
    the session (a few seconds), and its client."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster:
        with distributed.Client(cluster) as client:
            yield client


@pytest.fixture(scope="session")
def process_pool():
    """A ``ProcessPoolExecutor`` of two spawned processes, started once for the session."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool
