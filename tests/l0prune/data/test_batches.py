"""Batches: the forms a batch takes, the default loss, the weighted mean loss."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from l0prune.data.batches import (
    attention_mask,
    batch_size,
    check_data,
    cross_entropy,
    forward,
    mean_loss,
    to_device,
)

CPU = torch.device("cpu")


class Keywords(nn.Module):
    """Takes keyword inputs, Hugging Face style."""

    def forward(self, input_ids, attention_mask=None):
        return input_ids.float() * attention_mask


@pytest.mark.parametrize(
    "data, message",
    [
        (None, "re-iterable"),
        (torch.zeros(3), "re-iterable"),
        ((b for b in [torch.zeros(1)]), "one-shot"),
        (iter([torch.zeros(1)]), "one-shot"),
        ([], "empty"),
        (3, "re-iterable"),
    ],
)
def test_check_data_rejects(data, message):
    with pytest.raises(ValueError, match=message):
        check_data(data, "calibration")


def test_check_data_accepts_lists_and_loaders(mlp):
    _, data = mlp
    check_data([torch.zeros(2)], "calibration")
    check_data(data.loader("val"), "validation")


def test_forward_takes_every_batch_form():
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    expected = layer(x)
    for batch in (x, (x, torch.zeros(4)), [x, None, torch.zeros(4)]):
        assert torch.equal(forward(layer, batch, CPU), expected)
    ids, mask = torch.ones(2, 5, dtype=torch.long), torch.tensor([[1, 1, 1, 0, 0]] * 2)
    out = forward(Keywords(), {"input_ids": ids, "attention_mask": mask}, CPU)
    assert torch.equal(out, mask.float())


@pytest.mark.parametrize("batch", [(), "text", 3])
def test_forward_rejects_other_batches(batch):
    with pytest.raises(ValueError, match="a batch must be"):
        forward(nn.Identity(), batch, CPU)


def test_helpers():
    mask = torch.ones(2, 3)
    assert attention_mask({"input_ids": mask, "attention_mask": mask}) is mask
    assert attention_mask((mask, mask)) is None
    assert batch_size({"input_ids": torch.zeros(7, 2)}) == 7
    assert batch_size([torch.zeros(5, 1), torch.zeros(5)]) == 5
    moved = to_device({"a": (torch.zeros(1), 2), "b": [torch.ones(1)]}, CPU)
    assert isinstance(moved["a"], tuple) and moved["a"][1] == 2


def test_cross_entropy_default_loss():
    logits = torch.randn(6, 4)
    target = torch.randint(0, 4, (6,))
    expected = nn.functional.cross_entropy(logits, target)
    assert torch.equal(cross_entropy(logits, (None, target)), expected)
    # Hugging Face outputs: their own loss first, else logits against labels.
    assert cross_entropy(SimpleNamespace(loss=torch.tensor(2.0)), {}) == 2.0
    hf = SimpleNamespace(loss=None, logits=logits)
    assert torch.equal(cross_entropy(hf, {"labels": target}), expected)
    # Token-level logits (batch x seq x classes), -100 positions ignored.
    tokens = torch.randn(2, 3, 4)
    labels = torch.tensor([[0, 1, -100], [2, -100, 3]])
    keep = labels != -100
    assert torch.allclose(
        cross_entropy(tokens, (None, labels)),
        nn.functional.cross_entropy(tokens[keep], labels[keep]),
    )
    with pytest.raises(ValueError, match="loss_fn"):
        cross_entropy(logits, torch.zeros(6))


def test_mean_loss_weights_batches_by_size():
    model = nn.Linear(2, 3).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 2, generator=g), torch.randint(0, 3, (10,), generator=g)
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model(x), y))
    assert mean_loss(model, batches, cross_entropy, CPU) == pytest.approx(expected, rel=1e-6)


def test_mean_loss_rejects_a_non_scalar_loss():
    batches = [(torch.randn(4, 2), torch.zeros(4))]
    with pytest.raises(ValueError, match="scalar"):
        mean_loss(nn.Linear(2, 2), batches, lambda out, b: out, CPU)
