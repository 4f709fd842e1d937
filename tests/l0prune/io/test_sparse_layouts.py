"""The bitmask and 2:4 layouts: exact round trips, the documented bit order, the sizes."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l0prune.io.sparse_layouts import (
    bitmask_bytes,
    compress_bitmask,
    compress_two_four,
    decompress_bitmask,
    decompress_two_four,
    fits_two_four,
    two_four_bytes,
)


def _bytes(parts, skip=("shape",)):
    return sum(v.numel() * v.element_size() for k, v in parts.items() if k not in skip)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 21), density=st.floats(0, 1),
       seed=st.integers(0, 999), conv=st.booleans())
def test_bitmask_round_trip_is_exact(rows, cols, density, seed, conv):
    g = torch.Generator().manual_seed(seed)
    shape = (rows, cols, 1, 1) if conv else (rows, cols)
    tensor = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    parts = compress_bitmask(tensor)
    back = decompress_bitmask(parts)
    assert back.shape == tensor.shape and torch.equal(back, tensor)
    assert _bytes(parts) == bitmask_bytes(tensor)
    counts = (tensor.reshape(rows, -1) != 0).sum(1)
    assert parts["row_offsets"].tolist() == (torch.cumsum(counts, 0) - counts).tolist()


def test_bitmask_bits_are_numpy_packbits_little_per_row():
    """The bit order of compressed-tensors' layout: ``numpy.packbits(axis=-1,
    bitorder="little")`` over each row of the stored tensor."""
    g = torch.Generator().manual_seed(0)
    tensor = torch.randn(5, 19, generator=g) * (torch.rand(5, 19, generator=g) < 0.4)
    expected = np.packbits((tensor != 0).numpy(), axis=-1, bitorder="little")
    assert np.array_equal(compress_bitmask(tensor)["bitmask"].numpy(), expected)
    assert compress_bitmask(torch.tensor([[1.0] + [0.0] * 7 + [2.0]]))["bitmask"].tolist() == [
        [1, 1]
    ]


def _two_four(rows, cols, g, fewer=False):
    """A weight with two non-zeros in every group of four (or at most two with ``fewer``)."""
    scores = torch.rand(rows, cols // 4, 4, generator=g)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(
        2, scores.topk(2, dim=2).indices, True)
    if fewer:
        keep &= torch.rand(keep.shape, generator=g) < 0.6
    return (torch.randn(rows, cols // 4, 4, generator=g) * keep).reshape(rows, cols)


@pytest.mark.parametrize("cols", [4, 8, 12, 36])
@pytest.mark.parametrize("fewer", [False, True])
def test_two_four_round_trip_is_exact(cols, fewer):
    g = torch.Generator().manual_seed(cols)
    tensor = _two_four(6, cols, g, fewer)
    assert fits_two_four(tensor)
    parts = compress_two_four(tensor)
    assert parts["compressed"].shape == (6, cols // 2)
    assert torch.equal(decompress_two_four(parts), tensor)
    assert _bytes(parts) == two_four_bytes(tensor)


def test_two_four_indices_are_two_bits_per_kept_value():
    row = torch.tensor([[0.0, 5.0, 0.0, 7.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 3.0, 4.0]])
    parts = compress_two_four(row)
    # groups keep (1, 3), (0, 3), (2, 3): nibbles 1 | 3 << 2 = 13, 0 | 3 << 2 = 12, 2 | 3 << 2
    assert parts["indices"].tolist() == [[13 | 12 << 4, 14]]
    assert parts["compressed"].tolist() == [[5.0, 7.0, 1.0, 2.0, 3.0, 4.0]]


def test_two_four_of_a_transposed_weight_groups_its_inputs():
    """A ``Conv1D`` weight is stored in x out: its groups of four inputs run down the columns."""
    g = torch.Generator().manual_seed(1)
    out_in = _two_four(8, 16, g)
    stored = out_in.T.contiguous()
    assert fits_two_four(stored, transposed=True) and not fits_two_four(stored)
    parts = compress_two_four(stored, transposed=True)
    assert parts["shape"].tolist() == [16, 8]
    assert torch.equal(decompress_two_four(parts, transposed=True), stored)


def test_fits_two_four_refuses_three_in_a_group_and_ragged_widths():
    assert not fits_two_four(torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert not fits_two_four(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]))
    assert not fits_two_four(torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_parts_that_do_not_fit_are_refused():
    parts = compress_bitmask(torch.eye(4))
    parts["compressed"] = parts["compressed"][:-1]
    with pytest.raises(ValueError, match="marks 4 non-zeros but 3 values"):
        decompress_bitmask(parts)
    parts = compress_two_four(torch.eye(4))
    parts["shape"] = torch.tensor([4, 8])
    with pytest.raises(ValueError, match="do not fit"):
        decompress_two_four(parts)
