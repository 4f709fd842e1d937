"""Hugging Face ``datasets`` as calibration, validation and training data.

A ``datasets.Dataset`` or ``IterableDataset`` whose rows hold tokenised columns (what
``dataset.map(tokenizer)`` gives) is read as padded dict batches, as transformers'
``DataCollatorWithPadding`` makes them:

- the columns kept are those holding numbers: sequences (token ids, masks, labels per token) and
  single numbers (a class label); text and other columns are left out;
- ``label`` and ``label_ids`` are renamed ``labels``, the name models take;
- the rows of a batch are padded on the right to the longest: ``input_ids`` with
  ``pad_token_id``, ``labels`` with ``-100`` (ignored by the losses), every other column with 0;
  ``attention_mask`` (1 for each real token) is made from the lengths when the dataset has none.

:func:`l0prune.prune`, :func:`l0prune.gradual` and :func:`l0prune.train_l0` take such a dataset
as it is (:func:`batches_of`), ``batch_size`` 8 and pad id 0 (the attention mask makes the pad id
irrelevant); :func:`dataset_batches` chooses both. A dataset in ``with_format("torch")`` or
``"numpy"`` works the same.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Iterable, Iterator, Mapping

import torch

__all__ = ["DatasetBatches", "batches_of", "dataset_batches", "is_dataset"]

#: Rows per batch when a dataset is given as it is.
DEFAULT_BATCH_SIZE = 8
_RENAMED = {"label": "labels", "label_ids": "labels"}


def is_dataset(data) -> bool:
    """Whether ``data`` is a ``datasets.Dataset`` or ``IterableDataset`` (without importing
    ``datasets``: a dataset's maker has imported it).

    Example:
        >>> is_dataset([{"input_ids": [1, 2]}])
        False
    """
    module = sys.modules.get("datasets")
    if module is None:
        return False
    return isinstance(data, (module.Dataset, module.IterableDataset))


def _numeric(value) -> bool:
    """Whether a row's value holds numbers: a number, a tensor or array, or a (nested) list of
    numbers."""
    if isinstance(value, (bool, numbers.Number)) or hasattr(value, "dtype"):
        return True
    if isinstance(value, (list, tuple)):
        return not value or all(_numeric(item) for item in value)
    return False


def _pad_value(column: str, pad_token_id: int) -> int:
    return {"labels": -100, "input_ids": pad_token_id}.get(column, 0)


def _stack(values: list, pad: int) -> torch.Tensor:
    """The rows' values as one tensor, sequences padded on the right to the longest."""
    tensors = [torch.as_tensor(v) for v in values]
    if tensors[0].ndim == 0 or all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors)
    length = max(t.shape[0] for t in tensors)
    out = torch.full((len(tensors), length, *tensors[0].shape[1:]), pad,
                     dtype=tensors[0].dtype)
    for i, tensor in enumerate(tensors):
        out[i, : tensor.shape[0]] = tensor
    return out


class DatasetBatches:
    """A dataset's rows as padded dict batches, read anew on every pass (re-iterable).

    Args:
        dataset: a ``datasets.Dataset`` / ``IterableDataset``, or any re-iterable of dict rows.
        batch_size: rows per batch (the last may hold fewer).
        pad_token_id: what pads ``input_ids``.

    Example:
        >>> rows = [{"text": "a b c", "input_ids": [5, 6, 7], "label": 1},
        ...         {"text": "d", "input_ids": [8], "label": 0}]
        >>> batch = next(iter(DatasetBatches(rows, batch_size=2)))
        >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]], [1, 0])
    """

    def __init__(self, dataset: Iterable[Mapping], batch_size: int = DEFAULT_BATCH_SIZE,
                 pad_token_id: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise ValueError(f"pad_token_id must be an integer, got {pad_token_id!r}")
        self.dataset, self.batch_size, self.pad_token_id = dataset, batch_size, pad_token_id

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rows: list[Mapping] = []
        for row in self.dataset:
            rows.append(row)
            if len(rows) == self.batch_size:
                yield self._batch(rows)
                rows = []
        if rows:
            yield self._batch(rows)

    def _batch(self, rows: list[Mapping]) -> dict[str, torch.Tensor]:
        if not isinstance(rows[0], Mapping):
            raise ValueError(f"a dataset's rows must be dicts of columns, got "
                             f"{type(rows[0]).__name__}")
        columns = [c for c, v in rows[0].items() if _numeric(v)]
        if not columns:
            raise ValueError(f"the dataset has no tokenised column (columns {list(rows[0])}): "
                             "tokenise it first, such as dataset.map(lambda row: "
                             "tokenizer(row['text']), remove_columns=['text'])")
        batch = {}
        for column in columns:
            name = _RENAMED.get(column, column)
            batch[name] = _stack([row[column] for row in rows],
                                 _pad_value(name, self.pad_token_id))
        if "attention_mask" not in batch and "input_ids" in batch and batch["input_ids"].ndim > 1:
            lengths = torch.tensor([len(row["input_ids"]) for row in rows])
            width = batch["input_ids"].shape[1]
            batch["attention_mask"] = (torch.arange(width) < lengths[:, None]).long()
        return batch


def dataset_batches(dataset, batch_size: int = DEFAULT_BATCH_SIZE,
                    pad_token_id: int = 0) -> DatasetBatches:
    """A tokenised dataset as padded dict batches (see the module docstring).

    Args:
        dataset: a ``datasets.Dataset`` or ``IterableDataset`` with tokenised columns.
        batch_size: rows per batch.
        pad_token_id: the tokenizer's ``pad_token_id`` (padding is masked, so any id works).

    Returns:
        A re-iterable of dict batches for :func:`l0prune.prune`.

    Example:
        >>> [b["input_ids"].tolist() for b in dataset_batches([{"input_ids": [1]}] * 3, 2)]
        [[[1], [1]], [[1]]]
    """
    return DatasetBatches(dataset, batch_size, pad_token_id)


def batches_of(data):
    """``data`` as batches: a ``datasets`` dataset as :func:`dataset_batches` of it, anything
    else (``None`` too) as it is.

    Example:
        >>> batches_of([1, 2])
        [1, 2]
    """
    return DatasetBatches(data) if is_dataset(data) else data
