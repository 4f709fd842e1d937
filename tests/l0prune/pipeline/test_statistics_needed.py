"""Each method gets the statistics it reads and no more: magnitude none, Wanda the diagonal of
H, the others all of it (the solver registry says which)."""

import pytest
import torch
from torch import nn

import l0prune
from l0prune.model import statistics
from l0prune.pipeline import blockwise, layerwise
from solvers import LayerProblem, solve

from .test_blockwise import tiny, token_batches


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    return model, [torch.randn(32, 12, generator=g) for _ in range(3)]


@pytest.mark.parametrize("sequential", [True, False])
def test_magnitude_takes_no_statistics_and_solves_the_plain_problem(sequential, monkeypatch):
    model, data = _mlp()
    dense = [model[i].weight.detach().clone() for i in (0, 2)]
    monkeypatch.setattr(layerwise, "collect", _forbidden)
    report = l0prune.prune(model, data, sparsity=0.75, method="magnitude",
                           sequential=sequential, progress=False)
    assert report.calibration_passes == 0
    for layer, W in zip((model[0], model[2]), dense, strict=True):
        expected = solve(LayerProblem(W, None, sparsity=0.75), "magnitude")
        assert torch.equal(layer.weight.detach(), expected.weight)


def test_wanda_takes_the_diagonal_of_H_only(monkeypatch):
    model, data = _mlp()
    dense = model[0].weight.detach().clone()
    H = l0prune.second_moments(model, data)["0"]
    monkeypatch.setattr(statistics, "add_gram", _forbidden)
    l0prune.prune(model, data, sparsity=0.5, method="wanda", sequential=False, progress=False)
    expected = solve(LayerProblem(dense, H, sparsity=0.5), "wanda")
    assert torch.equal(model[0].weight.detach(), expected.weight.to(torch.float32))


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_block_by_block_takes_the_same_statistics_as_the_whole_model(method, monkeypatch):
    monkeypatch.setattr(statistics, "add_gram", _forbidden)
    if method == "magnitude":
        monkeypatch.setattr(blockwise, "collect", _forbidden)
        monkeypatch.setattr(blockwise, "capture", _forbidden)
    data = token_batches()
    by_block, whole = tiny("llama", 2), tiny("llama", 2)
    l0prune.prune(by_block, data, sparsity=0.5, method=method, progress=False)
    l0prune.prune(whole, data, sparsity=0.5, method=method, blockwise=False, progress=False)
    for (name, a), b in zip(by_block.named_parameters(), whole.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def _forbidden(*args, **kwargs):
    raise AssertionError("statistics the method does not read were taken")
