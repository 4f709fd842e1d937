"""The wide-layer benchmark: the budget split by error curves keeps the layer's count exactly,
the network's error is not hidden by its input-independent part, and the tiny tables' rows."""

import copy

import pytest
import torch
from torch import nn

from l0prune.bench import wide
from l0prune.bench.pitch import pitch_net
from l0prune.model.statistics import BlockDiagonal
from l0prune.pipeline.solves import target_problems


def test_the_error_curves_spread_exactly_the_layers_count():
    g = torch.Generator().manual_seed(0)
    blocks = []
    for width in (6, 10, 8):
        X = torch.randn(40, width, dtype=torch.float64, generator=g) * torch.rand(width,
                                                                                  generator=g)
        blocks.append((X.T @ X / 40)[None])
    H = BlockDiagonal((0, 6, 16, 24), blocks)
    problems = target_problems(torch.randn(1, 5, 24, generator=g), H, None, None)[0]
    counts = wide._curve_counts(problems, "obs", 37)
    assert sum(counts) == 37 and all(0 <= c <= 5 * p.shape[1]
                                     for c, p in zip(counts, problems, strict=True))


def test_the_output_error_is_not_hidden_by_an_output_that_ignores_the_input():
    g = torch.Generator().manual_seed(0)
    dense = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    with torch.no_grad():
        dense[0].bias.fill_(100.0)  # the same for every input, most of the features
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        pruned[0].weight.zero_()  # what varies with the input is lost
    x = torch.randn(64, 4, generator=g)
    assert wide.output_error(pruned, dense, x - x.mean(0)) == pytest.approx(1.0)


def test_the_tiny_tables_take_each_width_and_the_methods_that_read_no_h_once(
        monkeypatch, tmp_path):
    monkeypatch.setattr(wide, "trained_pitch_net", lambda capacity: pitch_net(1))
    out = tmp_path / "wide.md"
    wide.main(["--frames", "8", "--methods", "obs", "magnitude", "--h-blocks", "1024",
               "--out", str(out)])
    rows = [line.split(" | ")[:2] for line in out.read_text().splitlines()
            if line.startswith(("| obs", "| magnitude"))]
    assert rows == [["| obs", "full H"], ["| obs", "1024"], ["| magnitude", "full H"],
                    ["| obs", "1024"]]  # the last: layer 6's budget over its 2 blocks
