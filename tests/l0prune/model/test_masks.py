"""Masks: stored the torch.nn.utils.prune way, so torch's own tools work on them."""

import copy

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from l0prune.model.masks import attach, masked_weight, permanent_state_dict, refresh


def _pruned_layer():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    mask = torch.rand(4, 6) < 0.5
    weight = torch.randn(4, 6)
    param = layer.weight
    attach(layer, weight, mask)
    return layer, weight * mask, mask, param


def test_attach_stores_orig_mask_and_hook():
    layer, weight, mask, param = _pruned_layer()
    assert torch_prune.is_pruned(layer)
    assert layer.weight_orig is param  # the same parameter object, as torch keeps it
    assert torch.equal(layer.weight_mask, mask.float())
    assert torch.equal(layer.weight, weight)
    x = torch.randn(3, 6)
    assert torch.allclose(layer(x), x @ weight.T + layer.bias)


def test_prune_remove_makes_it_permanent():
    layer, weight, _, param = _pruned_layer()
    torch_prune.remove(layer, "weight")
    assert not torch_prune.is_pruned(layer)
    assert layer.weight is param and torch.equal(layer.weight, weight)
    assert set(dict(layer.named_parameters())) == {"weight", "bias"}


def test_masked_weight_and_refresh_follow_weight_orig():
    layer, weight, mask, _ = _pruned_layer()
    with torch.no_grad():
        layer.weight_orig.add_(1.0)
    expected = (weight + 1.0) * mask
    assert torch.equal(masked_weight(layer), expected)
    assert not torch.equal(layer.weight, expected)  # stale until a forward or a refresh
    refresh(layer)
    assert torch.equal(layer.weight, expected)
    plain = nn.Linear(2, 2)  # not pruned: its own weight, values and all
    assert torch.equal(masked_weight(plain), plain.weight)


def test_permanent_state_dict_has_the_dense_keys():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    dense_keys = list(model.state_dict())
    mask = torch.rand(4, 6) < 0.5
    attach(model[0], model[0].weight.detach().clone(), mask)
    state = permanent_state_dict(model)
    assert sorted(state) == sorted(dense_keys)
    assert torch.equal(state["0.weight"], masked_weight(model[0]))
    assert torch_prune.is_pruned(model)  # the model itself is unchanged
    fresh = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    fresh.load_state_dict(state)
    x = torch.randn(5, 6)
    assert torch.equal(fresh(x), model(x))


def test_a_freshly_masked_layer_deep_copies():
    layer, weight, mask, _ = _pruned_layer()
    other = copy.deepcopy(layer)
    assert torch.equal(other.weight, weight)
    x = torch.randn(2, 6, requires_grad=True)
    layer(x).sum().backward()  # the hook still gives the weight gradients in training
    # d sum(x (W o M)^T) / dW = M o (1 x^T summed over the batch): zero off the mask
    expected = mask * x.detach().sum(dim=0).expand(4, 6)
    assert torch.allclose(layer.weight_orig.grad, expected) and expected.abs().sum() > 0
