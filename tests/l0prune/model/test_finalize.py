"""``finalize``: the pruning made permanent, no mask left, whichever form it was in."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import l0prune
from tests.l0prune import tiny_hf


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_finalized_model_saves_and_reloads_with_identical_logits(kind, tmp_path):
    pytest.importorskip("transformers")
    model = tiny_hf.model(kind)
    dense_keys = set(model.state_dict())
    l0prune.prune(model, tiny_hf.windows(), sparsity=0.6, method="obs", progress=False)
    ids = tiny_hf.windows(seed=1)[0]["input_ids"]
    with torch.no_grad():
        before = model(ids).logits
    masks = l0prune.masks_of(model)
    params = {name: model.get_submodule(name).weight for name in masks}

    done = l0prune.finalize(model)

    assert done == [f"{name}.weight" for name in masks]
    assert l0prune.masks_of(model) == {} and set(model.state_dict()) == dense_keys
    for name, mask in masks.items():
        module = model.get_submodule(name)
        assert module.weight is params[name]  # the same parameter object
        assert not module.weight[~mask].any()
    model.save_pretrained(tmp_path)  # the model's own method, no l0prune involved
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
        assert torch.equal(reloaded(ids).logits, before)


def test_finalize_folds_torchs_form_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    data = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
    l0prune.prune(model, data, sparsity=0.5, method="wanda", progress=False)
    weight = model[0].weight
    expected = weight.detach().clone()
    l0prune.torch_prune(model)
    torch_prune.l1_unstructured(model[2], "weight", amount=0.5)  # a user's own
    assert l0prune.finalize(model) == ["0.weight", "2.weight"]
    assert not torch_prune.is_pruned(model) and l0prune.masks_of(model) == {}
    assert model[0].weight is weight and torch.equal(weight, expected)
    assert int((model[2].weight == 0).sum()) == 16


def test_finalize_on_a_plain_model_changes_nothing_and_refuses_non_modules():
    model = nn.Sequential(nn.Linear(3, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert l0prune.finalize(model) == []
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="model must be a torch nn.Module, got dict"):
        l0prune.finalize({})


def test_a_finalized_model_can_be_pruned_again():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    data = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
    l0prune.prune(model, data, sparsity=0.5, method="wanda", progress=False)
    with pytest.raises(ValueError, match="target '0' is already pruned .* l0prune.finalize"):
        l0prune.prune(model, data, sparsity=0.75, method="wanda", progress=False)
    l0prune.finalize(model)
    l0prune.prune(model, data, sparsity=0.75, method="wanda", progress=False)
    assert int((model[0].weight == 0).sum()) == 96
