"""LayerPruner builds each layer's problem once per statistics: one eigendecomposition per layer
across every budget of an error curve, and the sequential target from the solvers engine."""

import torch
from torch import nn

import l0prune
from l0prune import PruneConfig
from l0prune.model.snapshot import Snapshot
from l0prune.model.statistics import discover
from l0prune.model.targets import select_targets
from l0prune.pipeline.allocation import uniform
from l0prune.pipeline.layerwise import LayerPruner
from l0prune.pipeline.search import GRID
from solvers import Unstructured, register_method


def _pruner(sequential: bool, fixed: bool = False):
    """A pruner of a search (``alpha``: its problems kept for the curves), or of a run at a
    fixed sparsity."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                          nn.Linear(8, 2)).eval()
    data = [torch.randn(64, 12) for _ in range(2)]
    discovery = discover(model, data[0], torch.device("cpu"))
    targets = select_targets(model, discovery.order)
    target = {"sparsity": 0.5} if fixed else {"alpha": 1.05}
    config = PruneConfig(**target, sequential=sequential, progress=False)
    pruner = LayerPruner(model, data, targets, discovery, Snapshot(model), config,
                         device=torch.device("cpu"))
    return pruner, targets


def _counting_eigh(monkeypatch) -> list[int]:
    calls = []
    eigh = torch.linalg.eigh

    def counted(*args, **kwargs):
        calls.append(args[0].shape[-1])
        return eigh(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", counted)
    return calls


def test_an_error_curve_decomposes_each_layer_once(monkeypatch):
    pruner, targets = _pruner(sequential=True)
    calls = _counting_eigh(monkeypatch)
    pruner.run(uniform(targets, Unstructured(), 0.5))
    curves = pruner.curves(Unstructured(), GRID, pruner.curve_basis())  # the run's statistics
    assert all(len(c.counts) > 5 for c in curves)
    assert sorted(calls) == sorted(t.shape[1] for t in targets)  # one per layer, not per point


def test_a_run_at_a_fixed_sparsity_drops_each_layers_factorisation_once_solved(monkeypatch):
    pruner, targets = _pruner(sequential=False, fixed=True)
    calls = _counting_eigh(monkeypatch)
    pruner.run(uniform(targets, Unstructured(), 0.5))
    assert len(calls) == len(targets)
    pruner.curves(Unstructured(), GRID, pruner.curve_basis())
    assert len(calls) == 2 * len(targets)  # nothing was kept for a curve no such run asks


def test_new_statistics_build_new_problems(monkeypatch):
    pruner, targets = _pruner(sequential=True)
    calls = _counting_eigh(monkeypatch)
    pruner.run(uniform(targets, Unstructured(), 0.5))
    first = len(calls)
    assert first == len(targets)
    pruner.run(uniform(targets, Unstructured(), 0.7))  # later layers see new statistics
    assert len(calls) == 2 * len(targets) - 1  # the first layer's (dense) statistics are reused


def test_problems_go_with_their_statistics():
    """Block by block the statistics of a group are freed once it is solved: its problems
    (and their factorisations) must not stay cached beside the next group's."""
    pruner, targets = _pruner(sequential=False)
    pruner.run(uniform(targets, Unstructured(), 0.5))
    first = targets[0]
    moments = pruner.statistics[first.name]
    problems = pruner._problems(first, moments)
    assert pruner._problems(first, moments) is problems  # built once per statistics
    pruner.statistics.clear()
    del moments
    assert first.name not in pruner._cache


def test_prune_runs_a_registered_method():
    def halve(problem):
        mask = problem.budget.select(problem.W * problem.W)
        return problem.W * mask / 2, mask, {"iterations": 0, "converged": True, "history": []}

    register_method("test_halve", halve)
    pruner, targets = _pruner(sequential=False)
    model = pruner.model
    dense = {t.name: t.module.weight.detach().clone() for t in targets}
    report = l0prune.prune(model, [torch.randn(64, 12)], sparsity=0.5, method="test_halve",
                           sequential=False, progress=False)
    assert report.method == "test_halve"
    for t in targets:
        kept = l0prune.mask_of(t.module)
        assert torch.equal(t.module.weight.detach()[kept], dense[t.name][kept] / 2)
