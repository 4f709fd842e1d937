"""The wide-layer benchmark's budget split by error curves keeps the layer's count exactly."""

import torch

from l0prune.bench import wide
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
