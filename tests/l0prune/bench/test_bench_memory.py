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
    targets = 2 * (4 * 64 * 64 + 3 * 64 * 96)  # weights pruned
    assert (figures.mode, figures.passes) == (mode, passes)
    assert figures.block == block and figures.model == model
    assert figures.pruned_model == model + targets // 8  # weights in place, a bit per weight
    assert figures.activations == 2 * 2 * 16 * 64 * 4  # two streams: sequential statistics
    assert figures.solve >= 3 * 96 * 96 * 8  # the down projection's three float64 moments
    assert figures.budget == int(1.2 * (model + block + figures.activations + figures.solve))


def test_a_bfloat16_model_is_measured_in_its_dtype():
    args = memory._parser().parse_args([
        "--blocks", "2", "--hidden", "64", "--intermediate", "96", "--vocab", "128",
        "--samples", "2", "--seqlen", "16", "--method", "wanda", "--threads", "1",
        "--dtype", "bfloat16", "--child", "block",
    ])
    figures = memory.measure(args)
    targets = 2 * (4 * 64 * 64 + 3 * 64 * 96)
    assert figures.pruned_model == figures.model + targets // 8
    assert figures.activations == 2 * 2 * 16 * 64 * 2  # two bytes a value
