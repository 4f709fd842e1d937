"""Tokenised ``datasets`` as calibration and validation: padded batches with their attention
mask, taken by prune as they are."""

import pytest
import torch

import l0prune
from l0prune.data.batches import mean_loss
from l0prune.data.hf_datasets import dataset_batches
from tests.l0prune import tiny_hf

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")


def _rows():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 9, 3, 12, 7, 8, 4, 11, 6, 10]
    return [{"text": "x" * n, "input_ids": torch.randint(1, tiny_hf.VOCAB, (n,),
                                                          generator=g).tolist()}
            for n in lengths]


def _padded(rows, size):
    """The batches a user would make: padded on the right, masked."""
    out = []
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        width = max(len(r["input_ids"]) for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.int64)
        mask = torch.zeros(len(chunk), width, dtype=torch.int64)
        for i, row in enumerate(chunk):
            ids[i, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
            mask[i, :len(row["input_ids"])] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.mark.parametrize("form", ["plain", "torch", "iterable"])
def test_rows_become_padded_masked_batches(form):
    data = datasets.Dataset.from_list(_rows())
    data = {"plain": data, "torch": data.with_format("torch"),
            "iterable": data.to_iterable_dataset()}[form]
    batches = list(dataset_batches(data, batch_size=4))
    expected = _padded(_rows(), 4)
    assert len(batches) == len(expected) == 3
    for got, want in zip(batches, expected, strict=True):
        assert sorted(got) == ["attention_mask", "input_ids"]  # the text column is left out
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["attention_mask"], want["attention_mask"])
    assert len(list(dataset_batches(data, batch_size=4))) == 3  # read again: re-iterable


def test_labels_are_renamed_and_padded_with_the_ignored_index():
    rows = [{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "label": 2,
             "tags": [4, 5, 6]},
            {"input_ids": [7], "attention_mask": [1], "label": 0, "tags": [8]}]
    (batch,) = dataset_batches(datasets.Dataset.from_list(rows), batch_size=2, pad_token_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [7, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [2, 0] and batch["tags"].tolist() == [[4, 5, 6], [8, 0, 0]]
    per_token = [{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3], "labels": [3]}]
    (batch,) = dataset_batches(datasets.Dataset.from_list(per_token), batch_size=2)
    assert batch["labels"].tolist() == [[1, 2], [3, -100]]


def test_an_untokenised_dataset_is_one_line():
    data = datasets.Dataset.from_list([{"text": "hello"}])
    with pytest.raises(ValueError, match="no tokenised column .*'text'.*: tokenise it first"):
        l0prune.prune(tiny_hf.model("llama"), data, sparsity=0.5, progress=False)


def test_prune_takes_a_dataset_as_it_takes_the_batches_a_user_would_make():
    data = datasets.Dataset.from_list(_rows())
    by_dataset, by_hand = tiny_hf.model("llama"), tiny_hf.model("llama")
    first = l0prune.prune(by_dataset, data, sparsity=0.5, method="obs", validation=data,
                          loss_fn=l0prune.next_token_nll, progress=False)
    second = l0prune.prune(by_hand, _padded(_rows(), 8), sparsity=0.5, method="obs",
                           validation=_padded(_rows(), 8), loss_fn=l0prune.next_token_nll,
                           progress=False)
    assert first.pruned_loss == second.pruned_loss and first.dense_loss == second.dense_loss
    for (name, a), b in zip(by_dataset.state_dict().items(), by_hand.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert first.pruned_loss == pytest.approx(mean_loss(
        by_dataset, _padded(_rows(), 8), l0prune.next_token_nll, torch.device("cpu")))
