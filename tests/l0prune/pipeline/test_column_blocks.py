"""Block-diagonal statistics (``h_block``): each column block solved on its own at the layer's
sparsity, every budget met exactly, the error over all blocks, the same answer on every path."""

import concurrent.futures as cf

import pytest
import torch
from torch import nn

import l0prune
from l0prune.model.statistics import BlockDiagonal, collect, discover, input_groups
from l0prune.model.targets import select_targets
from l0prune.pipeline.restricted import within
from l0prune.pipeline.solves import apportion, block_budgets, solve_target
from solvers import NM, PerRow, Structured, Unstructured

CPU = torch.device("cpu")


def _net():
    """Convolutions of 8 and 12 channels x 3 taps (24 and 36 columns) and a 24-wide linear
    layer, so that ``h_block=10`` splits every target unevenly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv1d(12, 6, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(24, 8), nn.ReLU(),
                         nn.Linear(8, 2)).eval()


def _data(count=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 8, 6, generator=g),) for _ in range(count)]


def _prune(budget, h_block, **settings):
    model = _net()
    report = l0prune.prune(model, _data(), budget=budget, h_block=h_block, progress=False,
                           **settings)
    masks = l0prune.masks_of(model)
    weights = {name: model.get_submodule(name).weight.detach().clone() for name in masks}
    assert len(masks) == 3
    return report, masks, weights


@pytest.mark.parametrize("sequential", [False, True])
def test_blocks_as_wide_as_the_widest_layer_give_todays_model(sequential):
    settings = {"method": "obs", "sequential": sequential}
    _, masks, weights = _prune("unstructured(sparsity=0.6)", None, **settings)
    _, masks_wide, weights_wide = _prune("unstructured(sparsity=0.6)", 36, **settings)
    for name in masks:
        assert torch.equal(masks[name], masks_wide[name]), name
        assert torch.equal(weights[name], weights_wide[name]), name


def test_one_block_solves_as_the_whole_H_does():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 12, dtype=torch.float64, generator=g)
    H = (X.T @ X / 64)[None]
    W = torch.randn(1, 5, 12, generator=g)
    budgets = [Unstructured(k=20), PerRow(k=3)]
    whole = solve_target(W, H, None, None, budgets, "admm", {})
    one = solve_target(W, BlockDiagonal((0, 12), [H]), None, None, budgets, "admm", {})
    for a, b in zip(whole, one, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.mask, b.mask)
        assert a.relative_error == b.relative_error


def _check_pattern(budget_text, name, mask, report_kept):
    """``mask`` (the stored weight's shape) holds exactly the budget's count, in its pattern."""
    rows = mask.reshape(mask.shape[0], -1)
    assert int(rows.sum()) == report_kept
    if budget_text == "per-row":
        assert len(set(rows.sum(dim=1).tolist())) == 1, name
    elif budget_text == "2:4":
        assert (rows.reshape(rows.shape[0], -1, 4).sum(dim=2) == 2).all(), name
    elif budget_text == "structured":
        kept = mask.reshape(mask.shape[0], mask.shape[1], -1).any(dim=(0, 2))  # channels
        whole = mask.reshape(mask.shape[0], mask.shape[1], -1).all(dim=(0, 2))
        assert torch.equal(kept, whole), name  # a channel is kept whole or dropped whole


@pytest.mark.parametrize("budget", ["unstructured(sparsity=0.7)", "per-row(sparsity=0.6)",
                                    "2:4", "structured(sparsity=0.5)"])
@pytest.mark.parametrize("method", ["obs", "admm"])
def test_every_budget_is_met_exactly_with_blocks(budget, method):
    full, masks, _ = _prune(budget, None, method=method)
    blocked, blocked_masks, _ = _prune(budget, 10, method=method)
    family = budget.split("(")[0]
    for layer, plain in zip(blocked.layers, full.layers, strict=True):
        assert layer.kept == plain.kept, (budget, layer.name)  # the layer's own count
        _check_pattern(family, layer.name, blocked_masks[layer.name], layer.kept)


def test_the_error_is_the_layers_under_the_block_diagonal_H():
    """Sum of the blocks' numerators over the sum of their denominators: the relative error
    ``tr(D H_b D^T) / tr(W H_b W^T)`` of the whole layer under the block-diagonal ``H_b``."""
    model = _net()
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules()
             if isinstance(m, (nn.Conv1d, nn.Linear))}
    data = _data()
    report = l0prune.prune(model, data, sparsity=0.7, method="obs", sequential=False,
                           h_block=10, progress=False)
    discovery = discover(_net(), data[0], CPU)
    net = _net()
    targets = select_targets(net, discovery.order)
    plan = {"0": (0, 9, 18, 24), "2": (0, 9, 18, 27, 36), "5": (0, 8, 16, 24)}
    moments = collect(net, data, input_groups(targets, discovery), CPU, discovery, blocks=plan)
    modules = dict(model.named_modules())
    for layer in report.layers:
        H = moments[layer.name].H
        assert H.bounds == plan[layer.name]
        Hb = H.dense()[0]
        W = dense[layer.name].reshape(dense[layer.name].shape[0], -1).double()
        D = modules[layer.name].weight.detach().reshape(W.shape).double() - W
        expected = float(((D @ Hb) * D).sum() / ((W @ Hb) * W).sum())
        assert layer.relative_error == pytest.approx(expected, rel=1e-6), layer.name


class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(24, 24), nn.ReLU())
                                    for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_block_by_block_and_on_a_pool_give_the_whole_model_path_bit_for_bit():

    data = [torch.randn(32, 24) for _ in range(2)]

    def run(**settings):
        model = _Stack().eval()
        l0prune.prune(model, data, sparsity=0.6, method="obs", sequential=False, h_block=10,
                      targets=r"blocks\.\d\.0", progress=False, **settings)
        return [(b[0].weight.detach().clone(), l0prune.mask_of(b[0])) for b in model.blocks]

    whole = run(blockwise=False)
    for other in (run(blockwise=True), run(blockwise=False, executor=cf.ThreadPoolExecutor(1))):
        for (w, m), (w2, m2) in zip(whole, other, strict=True):
            assert torch.equal(m, m2) and torch.equal(w, w2)


def test_block_by_block_sequential_matches_the_whole_model_path():

    data = [torch.randn(32, 24) for _ in range(2)]
    found = []
    for blockwise in (False, True):
        model = _Stack().eval()
        report = l0prune.prune(model, data, sparsity=0.6, method="obs", h_block=10,
                               targets=r"blocks\.\d\.0", blockwise=blockwise, progress=False)
        found.append((report, [l0prune.mask_of(b[0]) for b in model.blocks]))
    (whole, whole_masks), (blocks, block_masks) = found
    for m, m2 in zip(whole_masks, block_masks, strict=True):
        assert torch.equal(m, m2)
    for a, b in zip(whole.layers, blocks.layers, strict=True):
        assert a.relative_error == pytest.approx(b.relative_error, rel=1e-5)


def test_gradual_with_blocks_keeps_pruned_weights_pruned_and_meets_each_step():
    model = _net()
    data = [(x, torch.randint(0, 2, (16,))) for (x,) in _data()]
    report = l0prune.gradual(model, data, sparsity=0.75, validation=data, steps=3,
                             method="obs", h_block=10, progress=False)
    assert report.trials[-1].sparsity == pytest.approx(0.75, abs=0.01)


def test_apportion_keeps_the_total_in_proportion_and_within_each_part():
    assert apportion(7, [10, 10, 10]) == [3, 2, 2]
    assert apportion(30, [10, 10, 10]) == [10, 10, 10]
    assert apportion(0, [3, 0, 2]) == [0, 0, 0]
    for total in range(0, 23):
        counts = apportion(total, [5, 9, 8])
        assert sum(counts) == total and all(0 <= c <= cap for c, cap in
                                            zip(counts, [5, 9, 8], strict=True))
    with pytest.raises(ValueError, match="cannot keep 5 in parts that hold 4"):
        apportion(5, [2, 2])


@pytest.mark.parametrize(("budget", "counts"), [
    (Unstructured(k=13), [5, 5, 3]),
    (PerRow(k=5), [2, 2, 1]),
    (Structured(group=2, k=3), [1, 1, 1]),
])
def test_block_budgets_split_the_layers_count(budget, counts):
    parts = block_budgets(budget, 3, [8, 8, 4])
    assert [p.k for p in parts] == counts
    assert block_budgets(NM(2, 4), 3, [8, 4]) == [NM(2, 4), NM(2, 4)]


def test_a_restricted_budget_splits_by_what_each_block_allows():
    allowed = torch.zeros(2, 8, dtype=torch.bool)
    allowed[:, :2] = True  # the first block allows 2 per row, the second 4
    allowed[:, 4:] = True
    parts = block_budgets(within(PerRow(k=3), allowed), 2, [4, 4])
    assert [p.k for p in parts] == [1, 2]
    for part, block in zip(parts, (allowed[:, :4], allowed[:, 4:]), strict=True):
        mask = part.select(torch.ones(2, 4))
        assert not (mask & ~block).any()
    parts = block_budgets(within(Unstructured(k=6), allowed), 2, [4, 4])
    assert [p.k for p in parts] == [2, 4]
