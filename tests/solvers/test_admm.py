"""ADMM: the schedules, warm starts, invariants and robustness."""

import sys

import pytest
import torch

from solvers import LayerProblem, solve

from ..conftest import correlated_inputs


def test_default_schedule_runs_longer_and_lands_lower(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.8)
    alps = solve(problem, "admm", schedule="alps")
    default = solve(problem, "admm")
    assert alps.info["converged"] and default.info["converged"]
    assert default.info["iterations"] > alps.info["iterations"]
    assert default.objective <= alps.objective * (1 + 1e-6)


def test_rho_only_grows_and_history_is_recorded(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.6)
    solution = solve(problem, "admm")
    info = solution.info
    rho = info["rho"]
    e = problem.scaled.eigh[0]
    assert rho[0] == pytest.approx(0.3 * float(e.median()))  # the default rho0
    assert solve(problem, "admm", schedule="alps").info["rho"][0] == pytest.approx(0.01)
    assert all(b >= a for a, b in zip(rho, rho[1:], strict=False))
    assert info["iterations"] == len(rho)
    assert len(info["history"]) == len(info["support_changes"]) == info["iterations"] // 3
    assert info["support_changes"][-1] == 0
    # history is f(D) at each check: the last one is the iterate the refit starts from.
    assert solution.objective <= info["history"][-1] * (1 + 1e-6)


def test_fast_schedule_stops_sooner(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    fast, default = solve(problem, "admm", schedule="fast"), solve(problem, "admm")
    alps = solve(problem, "admm", schedule="alps", swap_rounds=0)
    assert fast.info["converged"] and fast.info["iterations"] < default.info["iterations"]
    assert fast.info["iterations"] < alps.info["iterations"]
    assert fast.info["options"]["schedule"] == "fast"
    assert fast.objective <= solve(problem, "obs").objective


def test_fast_swaps_only_where_a_round_is_cheap(layer):
    """``swap_flops`` caps the swap search by ``out * in * width**2``: on this 24 x 32 layer
    (width 16 at 50 %: 2e5) ``"fast"`` searches, and only lowers ``f`` by it; under a smaller
    cap the run is exactly the one without swaps."""
    from dataclasses import replace

    from solvers.admm import SCHEDULES

    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.5)
    fast = solve(problem, "admm", schedule="fast")
    plain = solve(problem, "admm", schedule="fast", swap_rounds=0)
    assert fast.info["swaps"] > 0 and fast.objective < plain.objective
    capped = solve(problem, "admm", schedule=replace(SCHEDULES["fast"], swap_flops=24 * 32 * 255))
    assert capped.info["swaps"] == 0 and torch.equal(capped.weight, plain.weight)


def test_schedule_tiers_must_match_its_factors(layer):
    from solvers.admm import Schedule

    W, H = layer
    with pytest.raises(ValueError, match="one more factor than tiers"):
        solve(LayerProblem(W, H, sparsity=0.5), "admm",
              schedule=Schedule(0.3, (1.3, 1.1), 1, tiers=(0.1, 0.005)))


@pytest.mark.parametrize("shape", [(24, 32), (256, 128)])  # two products / one per iteration
@pytest.mark.parametrize("schedule", ["alps", "fast", "default"])
def test_the_loop_reads_the_device_once_per_check(layer, monkeypatch, schedule, shape):
    """The iterations queue work without waiting on the device: the ADMM loop reads a tensor
    back (``int`` / ``float`` / ``bool`` / ``item``) once per check, not once per iteration."""
    from solvers.admm import _one_product

    problem = _layer(*shape, seed=1)
    assert _one_product(problem.shape) == (shape == (256, 128))
    reads = []
    for name in ("__int__", "__float__", "__bool__", "item"):
        original = getattr(torch.Tensor, name)

        def counted(t, *args, original=original):
            if sys._getframe(1).f_code.co_qualname in LOOP:
                reads.append(1)
            return original(t, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    info = solve(problem, "admm", swap_rounds=0, max_iter=30, schedule=schedule).info
    checks = len(info["support_changes"])
    assert checks == -(-info["iterations"] // 3) and checks >= 3
    if schedule == "alps":
        assert info["iterations"] == 30 and not info["converged"]
    # the median eigenvalue for the relative rho0, then one read per check
    assert len(reads) == checks + (schedule != "alps")


@pytest.mark.parametrize("schedule", ["default", "fast", "alps"])
def test_never_worse_than_its_start(layer, schedule):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.75)
    start = solve(problem, "wanda", refit=True)  # the scaled-magnitude support, refitted
    assert solve(problem, "admm", schedule=schedule).objective <= start.objective * (1 + 1e-9)


def test_warm_start_from_a_denser_solution(layer):
    W, H = layer
    dense = solve(LayerProblem(W, H, sparsity=0.5), "admm")
    problem = LayerProblem(W, H, sparsity=0.7)
    warm = solve(problem, "admm", init=dense.weight)
    cold = solve(problem, "admm")
    assert int(warm.mask.sum()) == problem.budget.kept(problem.shape)
    assert warm.objective <= cold.objective * 1.1
    assert warm.info["options"]["init"] == "<tensor>"


def test_singular_H_without_ridge():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 16, generator=g)
    W = torch.randn(8, 16, generator=g)
    problem = LayerProblem(W, X.T @ X / 5, lam=0.0, sparsity=0.5)
    solution = solve(problem, "admm")
    assert int(solution.mask.sum()) == 64 and not solution.weight[~solution.mask].any()
    best = problem.refit(solution.mask, method="exact")  # the optimum on its support
    assert solution.objective == pytest.approx(problem.objective(best), rel=1e-3, abs=1e-6)
    assert solution.objective <= solve(problem, "magnitude", refit=True).objective + 1e-5


@pytest.mark.parametrize(
    ("options", "message"),
    [({"schedule": "quick"}, "schedule must be one of"), ({"rho0": 0.0}, "rho0 must be > 0")],
)
def test_bad_options(layer, options, message):
    W, H = layer
    with pytest.raises(ValueError, match=message):
        solve(LayerProblem(W, H, sparsity=0.5), "admm", **options)


def test_a_settled_support_stops_the_run(layer):
    """With ``settled`` every check whose movement is at most that fraction of the kept weights
    counts as stable: at 100 % the run stops at the first ``patience`` checks."""
    from solvers.admm import Schedule

    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.6)
    info = solve(problem, "admm", schedule=Schedule(0.01, (1.3, 1.2, 1.1), 2, settled=1.0)).info
    assert info["converged"] and info["iterations"] == 6 and info["support_changes"][0] > 0
    assert solve(problem, "admm", schedule="alps").info["iterations"] > 6


#: The functions ADMM's loop runs in.
LOOP = {"admm", *(f"{cls}.{fn}" for cls in ("_EigenSteps", "_InverseSteps")
                  for fn in ("step", "objective"))}


def _layer(out: int, inp: int, seed: int, dtype=torch.float32, sparsity: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    X = correlated_inputs(4 * inp, inp, seed=seed + 10, decay=0.97)
    return LayerProblem(W.to(dtype), (X.T @ X / X.shape[0]).to(dtype), sparsity=sparsity)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_one_product_iterations_equal_the_eigenbasis_ones(sparsity):
    """Where ``out >= in`` ADMM iterates with ``(A + rho I)^-1`` formed: in float64 the same
    iterates as in the eigenbasis (supports identical, ``D`` and ``f(D)`` to round-off), through
    changes of ``rho``."""
    from solvers.admm import _EigenSteps, _InverseSteps

    problem = _layer(64, 48, seed=4, dtype=torch.float64, sparsity=sparsity)
    sc, budget = problem.scaled, problem.budget
    start = sc.W0 * budget.select(sc.W0 * sc.W0)
    eigen, inverse = _EigenSteps(sc, start), _InverseSteps(sc, start)
    for rho in (0.05, 0.05, 0.08, 0.08, 0.2, 0.5):
        assert torch.equal(eigen.step(rho, budget), inverse.step(rho, budget))
        assert torch.allclose(eigen.D, inverse.D, rtol=1e-9, atol=1e-12)
        assert float(eigen.objective()) == pytest.approx(float(inverse.objective()), rel=1e-9)


def test_the_iteration_follows_the_layer_shape():
    from solvers.admm import _one_product

    assert _one_product((1536, 384)) and _one_product((256, 128))
    assert not _one_product((384, 1536)) and not _one_product((40, 16))  # wide; small


def test_auto_runs_the_fast_schedule_where_an_iteration_is_costly(monkeypatch):
    """The default picks the schedule by the cost of one iteration's product."""
    import solvers.admm as admm_module

    W, X = torch.randn(16, 32), torch.randn(128, 32)
    problem = LayerProblem.from_inputs(W, X, sparsity=0.5)
    default = solve(problem, "admm", schedule="default")
    fast = solve(problem, "admm", schedule="fast")
    assert torch.equal(solve(problem, "admm").weight, default.weight)
    monkeypatch.setattr(admm_module, "AUTO_FAST_FLOPS", 16 * 32 * 16)
    assert torch.equal(solve(problem, "admm").weight, fast.weight)
    assert default.info["iterations"] != fast.info["iterations"]
