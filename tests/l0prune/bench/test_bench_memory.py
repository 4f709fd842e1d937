"""The memory benchmark's figures on a tiny model, in this process (the benchmark itself runs
each mode in a fresh process)."""

import pytest

from l0prune.bench import memory

pytest.importorskip("transformers")


@pytest.mark.parametrize("mode, passes", [("block", 1), ("whole", 2 * 4)])
def test_figures_of_a_tiny_run(mode, passes):
    args = memory._parser().parse_args([
        "--blocks", "2", "--hidden", "64", "--intermediate", "96", "--vocab", "128",
        "--samples", "2", "--seqlen", "16", "--method", "wanda", "--threads", "1",
        "--child", mode,
    ])
    figures = memory.measure(args)
    block = 4 * (4 * 64 * 64 + 3 * 64 * 96 + 2 * 64)  # q k v o, gate up down, two norms
    rotary = 4 * 2 * 32  # inv_freq and original_inv_freq buffers: head size 64 / 2
    model = 2 * block + 4 * (2 * 128 * 64 + 64) + rotary  # embedding, head, final norm
    targets = 4 * 2 * (4 * 64 * 64 + 3 * 64 * 96)
    assert (figures.mode, figures.passes) == (mode, passes)
    assert figures.block == block and figures.model == model
    assert figures.pruned_model == model + 2 * targets
    assert figures.activations == 2 * 2 * 16 * 64 * 4  # two streams: sequential statistics
    assert figures.solve >= 3 * 96 * 96 * 8  # the down projection's three float64 moments
    assert figures.budget == int(1.2 * (figures.pruned_model + block + figures.activations
                                         + figures.solve))
