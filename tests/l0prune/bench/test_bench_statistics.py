"""The statistics benchmark measures the rows the statistics take, against their own product."""

import torch
from torch import nn

from l0prune.bench import layer_statistics as bench
from l0prune.bench.pitch import frames, pitch_net
from l0prune.model.targets import Target


def test_each_layer_is_measured_on_the_patches_the_model_feeds_it():
    model = pitch_net("tiny")
    inputs = bench.layer_inputs(model, list(frames(4).split(2)), ["6"])["6"]
    assert [tuple(x.shape) for x in inputs] == [(2, 128, 128 + 63, 1)] * 2  # padded "same"
    row = bench.measure("pitch", Target("6", model[6]), inputs, None, repeat=1)
    assert (row.width, row.rows) == (128 * 64, 4 * 128)  # channels x taps, frames x positions
    text = bench.table([row], "l0prune bench statistics", 1)
    assert f"| {row.parallel / row.floor:.2f} |" in text and "| 8,192 | 512 |" in text


def test_token_rows_leave_the_padding_out():
    layer = nn.Linear(4, 3)
    inputs = [torch.randn(2, 5, 4)]
    masks = [torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])]
    assert bench.measure("m", Target("l", layer), inputs, masks, repeat=1).rows == 8


def test_block_diagonal_statistics_are_measured_against_their_blocks_products():
    model = pitch_net("tiny")
    inputs = bench.layer_inputs(model, list(frames(2).split(2)), ["6"])["6"]
    row = bench.measure("pitch", Target("6", model[6]), inputs, None, repeat=1, h_block=2048)
    assert (row.width, row.rows, row.blocks) == (128 * 64, 2 * 128, 4)
    assert "| 4 |" in bench.table([row], "l0prune bench statistics --h-block 2048", 1)
