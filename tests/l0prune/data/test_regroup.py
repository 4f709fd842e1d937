"""Calibration batches regrouped by length: the same real tokens, little padding, and the
statistics of the user's batches."""

import pytest
import torch

import l0prune
from l0prune.data.regroup import regrouped
from tests.l0prune.pipeline.test_blockwise import tiny


def _padded_batches(side: str = "right", size: int = 8, seed: int = 0):
    """What a tokenizer gives: texts in their order, each batch padded to its longest."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 33, (4 * size,), generator=g).tolist()
    batches = []
    for start in range(0, len(lengths), size):
        part = lengths[start:start + size]
        ids = torch.full((size, max(part)), 0)
        mask = torch.zeros_like(ids)
        for i, n in enumerate(part):
            span = slice(0, n) if side == "right" else slice(max(part) - n, max(part))
            ids[i, span] = torch.randint(1, 97, (n,), generator=g)
            mask[i, span] = 1
        batches.append({"input_ids": ids, "attention_mask": mask,
                        "token_type_ids": torch.zeros_like(ids)})
    return batches


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_same_real_tokens_in_batches_of_the_same_size_with_little_padding(side):
    given = _padded_batches(side)
    found = regrouped(given)
    texts = sorted(tuple(b["input_ids"][i][b["attention_mask"][i] != 0].tolist())
                   for b in given for i in range(len(b["input_ids"])))
    again = sorted(tuple(b["input_ids"][i][b["attention_mask"][i] != 0].tolist())
                   for b in found for i in range(len(b["input_ids"])))
    assert again == texts and [len(b["input_ids"]) for b in found] == [8, 8, 8, 8]
    padding = sum(int((b["attention_mask"] == 0).sum()) for b in found)
    assert padding < 0.25 * sum(int((b["attention_mask"] == 0).sum()) for b in given)
    for b in found:  # right-padded, keys and dtypes kept
        assert set(b) == {"input_ids", "attention_mask", "token_type_ids"}
        assert bool((b["attention_mask"].diff(dim=1) <= 0).all())


def test_batches_of_another_form_are_left_as_they_are():
    tensors = [torch.randn(4, 3)]
    assert regrouped(tensors) is tensors
    holes = [{"input_ids": torch.ones(1, 3, dtype=torch.long),
              "attention_mask": torch.tensor([[1, 0, 1]])}]
    assert regrouped(holes) is holes


def test_the_statistics_of_regrouped_batches_are_those_of_the_users():
    """Block by block on a tiny LLaMA: padded right, the pruned model is the one the same
    texts give unpadded (real tokens only) up to float rounding."""
    padded = _padded_batches("right", size=4)
    single = [{"input_ids": b["input_ids"][i:i + 1, :int(b["attention_mask"][i].sum())],
               "attention_mask": b["attention_mask"][i:i + 1, :int(b["attention_mask"][i].sum())]}
              for b in padded for i in range(len(b["input_ids"]))]
    a, b = tiny("llama", 2), tiny("llama", 2)
    l0prune.prune(a, padded, sparsity=0.5, method="obs", progress=False)
    l0prune.prune(b, single, sparsity=0.5, method="obs", progress=False)
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), name


def test_padding_is_not_run_through_the_model_for_the_statistics():
    """The forward passes of a prune see the real tokens and little else, however the user
    padded (here half the positions are padding)."""
    padded = _padded_batches("left", size=8)
    real = sum(int(b["attention_mask"].sum()) for b in padded)
    model = tiny("llama", 2)
    seen = []
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    l0prune.prune(model, padded, sparsity=0.5, method="obs", progress=False)
    positions = sum(x.numel() for x in seen[1:])  # the first is the discovery's batch
    assert positions < 1.25 * real < sum(b["input_ids"].numel() for b in padded)
