"""Two compact layouts of a pruned weight: the bitmask and the 2:4 layout.

Both are pure tensor encodings, read back bit for bit. They follow the layouts of
compressed-tensors' former ``sparse-bitmask`` format and of 2:4 semi-structured sparsity.

**Bitmask** (over the *stored* tensor, viewed as ``rows x cols`` with ``rows = shape[0]``; a
Hugging Face ``Conv1D`` stores ``in x out``, so its rows are input features):

- ``shape``: the dense shape (int64);
- ``bitmask``: ``rows x ceil(cols / 8)`` uint8, bit ``j % 8`` (least significant first) of byte
  ``j // 8`` in row ``i`` set when entry ``(i, j)`` is non-zero;
- ``compressed``: the non-zero values, row-major (1-D);
- ``row_offsets``: ``rows`` int32 (int64 from 2^31 non-zeros on), where each row's values start
  in ``compressed``.

Size: ``rows * ceil(cols / 8) + nnz * itemsize + 4 * rows`` bytes, about ``1/32 + density`` of
the dense fp32 tensor.

**2:4** (over the ``out x in`` matrix the solvers prune: the stored tensor for ``Linear`` and
convolutions, flattened to ``out x (in * kh * kw)``; its transpose for ``Conv1D``), for a weight
in which every group of four consecutive inputs of a row holds at most two non-zeros:

- ``shape``: the dense shape (int64);
- ``compressed``: ``rows x cols / 2``, the two kept values of each group in input order;
- ``indices``: ``rows x ceil(cols / 8)`` uint8, the 2-bit positions (0-3) of the two kept values
  of each group; group ``g`` uses the low nibble of byte ``g // 2`` when ``g`` is even and the
  high one when odd, its first position in the nibble's low two bits.

A group with fewer than two non-zeros keeps its non-zeros and fills up with its first zero
positions (stored as zero values). Size: ``numel / 2 * itemsize + numel / 8`` bytes, about
``0.53`` of the dense fp32 tensor.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "bitmask_bytes",
    "compress_bitmask",
    "compress_two_four",
    "decompress_bitmask",
    "decompress_two_four",
    "fits_two_four",
    "pack_bits",
    "two_four_bytes",
    "two_four_mask",
    "unpack_bits",
]

_BITS = 1 << torch.arange(8, dtype=torch.int32)  # least significant bit first
_BYTE_BITS = _BITS.to(torch.uint8)


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(tensor.shape[0], -1)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """``rows x cols`` booleans as ``rows x ceil(cols / 8)`` bytes, least significant bit first
    (``numpy.packbits(mask, axis=-1, bitorder="little")``).

    Example:
        >>> pack_bits(torch.tensor([[True, False, True]])).tolist()
        [[5]]
    """
    rows, cols = mask.shape
    padded = torch.zeros(rows, math.ceil(cols / 8) * 8, dtype=torch.int32)
    padded[:, :cols] = mask.to(torch.int32)
    return (padded.reshape(rows, -1, 8) * _BITS).sum(dim=2).to(torch.uint8)


def unpack_bits(bits: torch.Tensor, cols: int) -> torch.Tensor:
    """``rows x cols`` booleans from :func:`pack_bits`'s bytes (eight bytes per stored byte).

    Example:
        >>> unpack_bits(torch.tensor([[5]], dtype=torch.uint8), 3).tolist()
        [[True, False, True]]
    """
    expanded = (bits.unsqueeze(-1) & _BYTE_BITS) != 0
    return expanded.reshape(bits.shape[0], -1)[:, :cols]


def _offset_bytes(nnz: int) -> int:
    return 4 if nnz < 2**31 else 8


def bitmask_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor`` in the bitmask layout (``shape`` excluded).

    Args:
        tensor: a tensor with at least two dimensions.

    Returns:
        The payload size.

    Example:
        >>> bitmask_bytes(torch.zeros(4, 16))
        24
    """
    rows, cols = _rows(tensor).shape
    nnz = int((tensor != 0).sum())
    return rows * math.ceil(cols / 8) + nnz * tensor.element_size() + _offset_bytes(nnz) * rows


def compress_bitmask(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """``tensor`` in the bitmask layout (CPU tensors).

    Args:
        tensor: a tensor with at least two dimensions.

    Returns:
        ``{"shape", "bitmask", "compressed", "row_offsets"}``.

    Example:
        >>> parts = compress_bitmask(torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 4.0]]))
        >>> parts["bitmask"].tolist(), parts["compressed"].tolist(), parts["row_offsets"].tolist()
        ([[2], [5]], [2.0, 3.0, 4.0], [0, 1])
    """
    matrix = _rows(tensor.detach().cpu())
    nonzero = matrix != 0
    counts = nonzero.sum(dim=1)
    return {
        "shape": torch.tensor(list(tensor.shape), dtype=torch.int64),
        "bitmask": pack_bits(nonzero),
        "compressed": matrix[nonzero].contiguous(),
        "row_offsets": (torch.cumsum(counts, 0) - counts).to(
            torch.int32 if _offset_bytes(int(counts.sum())) == 4 else torch.int64
        ),
    }


def decompress_bitmask(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense tensor of a :func:`compress_bitmask` result.

    Args:
        parts: ``shape``, ``bitmask``, ``compressed`` (``row_offsets`` is not needed).

    Returns:
        The tensor, bit for bit.

    Raises:
        ValueError: when the parts do not fit together.

    Example:
        >>> t = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
        >>> torch.equal(decompress_bitmask(compress_bitmask(t)), t)
        True
    """
    shape = [int(s) for s in parts["shape"].tolist()]
    rows, cols = shape[0], math.prod(shape[1:])
    bits, values = parts["bitmask"], parts["compressed"]
    if tuple(bits.shape) != (rows, math.ceil(cols / 8)):
        raise ValueError(
            f"bitmask of shape {tuple(bits.shape)} does not fit a tensor of shape {shape}"
        )
    mask = unpack_bits(bits, cols)
    if int(mask.sum()) != values.numel():
        raise ValueError(
            f"bitmask marks {int(mask.sum())} non-zeros but {values.numel()} values are stored"
        )
    out = torch.zeros(rows, cols, dtype=values.dtype)
    out[mask] = values
    return out.reshape(shape)


def _matrix(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    return tensor.T if transposed else _rows(tensor)


def fits_two_four(tensor: torch.Tensor, transposed: bool = False) -> bool:
    """Whether every group of four consecutive inputs holds at most two non-zeros.

    Args:
        tensor: a weight with at least two dimensions.
        transposed: the weight is stored ``in x out`` (Hugging Face ``Conv1D``).

    Returns:
        True when the 2:4 layout can hold ``tensor`` exactly.

    Example:
        >>> fits_two_four(torch.tensor([[1.0, 0.0, 2.0, 0.0]])), fits_two_four(torch.ones(1, 4))
        (True, False)
    """
    if tensor.ndim < 2 or (transposed and tensor.ndim != 2):
        return False
    matrix = _matrix(tensor, transposed)
    if matrix.shape[1] % 4:
        return False
    counts = (matrix != 0).reshape(matrix.shape[0], -1, 4).sum(dim=2)
    return bool((counts <= 2).all())


def two_four_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor`` in the 2:4 layout (``shape`` excluded).

    Example:
        >>> two_four_bytes(torch.zeros(4, 16))
        136
    """
    rows, cols = _rows(tensor).shape
    return rows * cols // 2 * tensor.element_size() + rows * math.ceil(cols / 8)


def _kept_positions(groups: torch.Tensor) -> torch.Tensor:
    """The two positions kept of each group of four (``... x 4``), in input order: the
    non-zeros, filled up with the first zeros."""
    order = torch.argsort((groups == 0).to(torch.int64) * 4 + torch.arange(4), dim=-1)
    return order[..., :2].sort(dim=-1).values


def two_four_mask(tensor: torch.Tensor) -> torch.Tensor:
    """Two marked entries in every group of four consecutive entries of the last dimension:
    the non-zeros, filled up with the first zeros (the group must hold at most two non-zeros).

    This is the mask of compressed-tensors' ``sparse-24-bitmask`` format over a stored weight;
    its own compressor picks the largest two magnitudes, which are the same entries wherever a
    group holds exactly two non-zeros.

    Args:
        tensor: a tensor whose last dimension is a multiple of four.

    Returns:
        A boolean tensor of ``tensor``'s shape.

    Example:
        >>> two_four_mask(torch.tensor([[0.0, 5.0, 0.0, 0.0]])).tolist()
        [[True, True, False, False]]
    """
    groups = tensor.reshape(*tensor.shape[:-1], -1, 4)
    mask = torch.zeros(groups.shape, dtype=torch.bool)
    mask.scatter_(-1, _kept_positions(groups), True)
    return mask.reshape(tensor.shape)


def compress_two_four(tensor: torch.Tensor, transposed: bool = False) -> dict[str, torch.Tensor]:
    """``tensor`` in the 2:4 layout; it must pass :func:`fits_two_four`.

    Args:
        tensor: the weight.
        transposed: stored ``in x out`` (``Conv1D``): the layout is of its transpose.

    Returns:
        ``{"shape", "compressed", "indices"}``.

    Example:
        >>> parts = compress_two_four(torch.tensor([[0.0, 5.0, 0.0, 7.0, 1.0, 0.0, 0.0, 0.0]]))
        >>> parts["compressed"].tolist(), parts["indices"].tolist()  # positions (1, 3), (0, 1)
        ([[5.0, 7.0, 1.0, 0.0]], [[77]])
    """
    matrix = _matrix(tensor.detach().cpu(), transposed)
    rows, cols = matrix.shape
    groups = matrix.reshape(rows, cols // 4, 4)
    kept = _kept_positions(groups)
    values = torch.gather(groups, 2, kept).reshape(rows, cols // 2)
    nibbles = (kept[:, :, 0] | (kept[:, :, 1] << 2)).to(torch.int32)
    if nibbles.shape[1] % 2:
        nibbles = torch.cat([nibbles, torch.zeros(rows, 1, dtype=torch.int32)], dim=1)
    packed = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return {
        "shape": torch.tensor(list(tensor.shape), dtype=torch.int64),
        "compressed": values.contiguous(),
        "indices": packed.to(torch.uint8),
    }


def decompress_two_four(parts: dict[str, torch.Tensor], transposed: bool = False) -> torch.Tensor:
    """The dense tensor of a :func:`compress_two_four` result.

    Args:
        parts: ``shape``, ``compressed``, ``indices``.
        transposed: as given to :func:`compress_two_four`.

    Returns:
        The tensor, bit for bit.

    Raises:
        ValueError: when the parts do not fit together.

    Example:
        >>> t = torch.tensor([[0.0, 5.0, 0.0, 7.0]])
        >>> torch.equal(decompress_two_four(compress_two_four(t)), t)
        True
    """
    shape = [int(s) for s in parts["shape"].tolist()]
    rows, cols = (shape[1], shape[0]) if transposed else (shape[0], math.prod(shape[1:]))
    values, indices = parts["compressed"], parts["indices"]
    if cols % 4 or tuple(values.shape) != (rows, cols // 2) or tuple(indices.shape) != (
        rows, math.ceil(cols / 8)
    ):
        raise ValueError(
            f"2:4 parts of shapes {tuple(values.shape)} and {tuple(indices.shape)} do not fit a "
            f"tensor of shape {shape}"
        )
    packed = indices.to(torch.int64)
    nibbles = torch.stack([packed & 15, packed >> 4], dim=2).reshape(rows, -1)[:, : cols // 4]
    kept = torch.stack([nibbles & 3, nibbles >> 2], dim=2)
    groups = torch.zeros(rows, cols // 4, 4, dtype=values.dtype)
    groups.scatter_(2, kept, values.reshape(rows, cols // 4, 2))
    matrix = groups.reshape(rows, cols)
    return (matrix.T if transposed else matrix).contiguous().reshape(shape)
