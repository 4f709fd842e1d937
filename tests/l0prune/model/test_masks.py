"""Masks: the pruned weight in place, the mask as bits beside it; torch's own form on request."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import l0prune
from l0prune.model.masks import (
    BITS,
    attach,
    forget,
    mask_of,
    masked_weight,
    masks_of,
    pack,
    permanent_state_dict,
    refresh,
    reparametrized,
    unpack,
)
from tests.l0prune import tiny_hf


def _pruned_layer():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    mask = torch.rand(4, 6) < 0.5
    weight = torch.randn(4, 6)
    param = layer.weight
    attach(layer, weight, mask)
    return layer, weight * mask, mask, param


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (4, 2, 3, 3), (13, 29)])
def test_pack_and_unpack_give_the_mask_back(shape):
    g = torch.Generator().manual_seed(sum(shape))
    mask = torch.rand(shape, generator=g) < 0.5
    bits = pack(mask)
    assert bits.dtype == torch.uint8 and bits.shape == (-(-mask.numel() // 8),)
    assert torch.equal(unpack(bits, shape), mask)
    assert torch.equal(unpack(pack(mask.float()), shape), mask)  # 0 / 1 masks too


def test_bits_are_row_major_least_significant_first():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 0] = mask[0, 7] = mask[1, 1] = True
    assert pack(mask).tolist() == [1 + 128, 2]
    assert torch.equal(pack(mask.T.contiguous().T), pack(mask))  # strides do not matter


def test_attach_writes_the_weight_in_place_and_keeps_the_mask_as_bits():
    layer, weight, mask, param = _pruned_layer()
    assert layer.weight is param  # the same parameter object: optimizers stay valid
    assert torch.equal(layer.weight, weight)
    assert set(layer.state_dict()) == {"weight", "bias"}  # the bits are not saved
    assert layer._buffers[BITS].dtype == torch.uint8 and layer._buffers[BITS].numel() == 3
    assert torch.equal(mask_of(layer), mask)
    x = torch.randn(3, 6)
    assert torch.allclose(layer(x), x @ weight.T + layer.bias)
    assert not torch_prune.is_pruned(layer) and not layer._forward_pre_hooks


def test_attach_again_replaces_the_mask():
    layer, _, mask, _ = _pruned_layer()
    attach(layer, layer.weight, mask & (torch.arange(6) < 3))
    assert torch.equal(mask_of(layer), mask & (torch.arange(6) < 3))
    assert int((layer.weight != 0).sum()) <= int(mask_of(layer).sum())


def test_a_dense_layer_has_no_mask_and_forget_drops_one():
    assert mask_of(nn.Linear(2, 2)) is None
    layer, weight, _, _ = _pruned_layer()
    assert forget(layer) and mask_of(layer) is None and BITS not in layer._buffers
    assert torch.equal(layer.weight, weight)  # the zeros stay


def test_masks_follow_the_model_across_devices_dtypes_and_copies():
    layer, weight, mask, _ = _pruned_layer()
    layer.to(torch.bfloat16)
    assert layer._buffers[BITS].dtype == torch.uint8  # not cast with the weights
    assert torch.equal(mask_of(layer), mask)
    other = copy.deepcopy(layer)
    assert torch.equal(mask_of(other), mask) and torch.equal(other.weight, layer.weight)


def test_the_pruned_model_is_its_dense_size_plus_the_bits():
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    dense = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    for layer in model:
        attach(layer, layer.weight, torch.rand(256, 256) < 0.5)
    pruned = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert pruned == dense + 2 * 256 * 256 // 8


def test_state_dict_loads_into_the_pruned_model_and_a_fresh_one():
    model = _model()
    mask = torch.rand(4, 6) < 0.5
    attach(model[0], model[0].weight, mask)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert list(state) == list(_model().state_dict())
    fresh = _model()
    with torch.no_grad():
        fresh[0].weight.normal_()
    fresh.load_state_dict(state)  # strict: the dense model's keys
    x = torch.randn(5, 6)
    assert torch.equal(fresh(x), model(x))
    model.load_state_dict(state)  # into the pruned model: the mask stays
    assert torch.equal(mask_of(model[0]), mask) and torch.equal(permanent_state_dict(model)[
        "0.weight"], state["0.weight"])


def test_torch_prune_gives_torchs_form_and_prune_remove_keeps_the_zeros():
    layer, weight, mask, param = _pruned_layer()
    assert l0prune.torch_prune(layer) == ["weight"]
    assert torch_prune.is_pruned(layer) and BITS not in layer._buffers
    assert layer.weight_orig is param and torch.equal(layer.weight_mask, mask.float())
    assert torch.equal(layer.weight, weight) and torch.equal(mask_of(layer), mask)
    assert l0prune.torch_prune(layer) == []  # already in torch's form
    assert set(permanent_state_dict(layer)) == {"weight", "bias"}
    other = copy.deepcopy(layer)  # the masked weight is computed outside autograd
    assert torch.equal(other.weight, weight)
    x = torch.randn(2, 6)
    layer(x).sum().backward()
    assert torch.equal(layer.weight_orig.grad[~mask], torch.zeros(int((~mask).sum())))
    torch_prune.remove(layer, "weight")
    assert layer.weight is param and torch.equal(layer.weight, weight)


def test_reparametrized_training_keeps_the_zeros_and_folds_back():
    layer, _, mask, param = _pruned_layer()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    with reparametrized(layer):
        assert torch_prune.is_pruned(layer)
        for _ in range(3):
            optimizer.zero_grad()
            layer(torch.randn(8, 6)).pow(2).sum().backward()
            optimizer.step()
    assert not torch_prune.is_pruned(layer) and layer.weight is param
    assert list(layer.state_dict()) == ["weight", "bias"]  # in their order
    assert torch.equal(mask_of(layer), mask)
    assert torch.equal(layer.weight[~mask], torch.zeros(int((~mask).sum())))
    assert bool((layer.weight[mask] != 0).all())


def test_reparametrized_folds_back_on_an_exception_and_leaves_torch_pruned_layers():
    layer, weight, mask, _ = _pruned_layer()
    theirs = nn.Linear(6, 4)
    torch_prune.l1_unstructured(theirs, "weight", amount=0.5)
    model = nn.Sequential(layer, theirs)
    with pytest.raises(RuntimeError, match="boom"), reparametrized(model):
        raise RuntimeError("boom")
    assert not torch_prune.is_pruned(layer) and torch.equal(mask_of(layer), mask)
    assert torch.equal(layer.weight, weight)
    assert torch_prune.is_pruned(theirs)  # a user's torch form stays as it is
    assert sorted(masks_of(model)) == ["0", "1"]


def test_masked_weight_and_refresh_follow_weight_orig_in_torchs_form():
    layer, weight, mask, _ = _pruned_layer()
    assert masked_weight(layer) is layer.weight  # in place: the weight itself
    l0prune.torch_prune(layer)
    with torch.no_grad():
        layer.weight_orig.add_(1.0)
    expected = (weight + 1.0) * mask
    assert torch.equal(masked_weight(layer), expected)
    assert not torch.equal(layer.weight, expected)  # stale until a forward or a refresh
    refresh(layer)
    assert torch.equal(layer.weight, expected)


def _outputs(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _pruned_hf(kind):
    model = tiny_hf.model(kind)
    l0prune.prune(model, tiny_hf.windows(), sparsity=0.6, method="obs", progress=False)
    return model


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_plain_save_pretrained_after_prune_reloads_the_pruned_model(kind, tmp_path):
    pytest.importorskip("transformers")
    model = _pruned_hf(kind)
    ids = tiny_hf.windows(seed=1)[0]["input_ids"]
    expected = _outputs(model, ids)
    pruned = masks_of(model)
    model.save_pretrained(tmp_path)  # the model's own method, no finalize
    fresh = type(model).from_pretrained(tmp_path).eval()
    assert torch.equal(_outputs(fresh, ids), expected)
    for name, mask in pruned.items():
        weight = fresh.get_submodule(name).weight
        assert torch.equal(weight, model.get_submodule(name).weight)
        assert not weight[~mask].any()
    model.load_state_dict(type(model).from_pretrained(tmp_path).state_dict())
    assert torch.equal(_outputs(model, ids), expected)  # into the pruned model, masks kept
    assert all(torch.equal(mask_of(model.get_submodule(n)), m) for n, m in pruned.items())


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_torch_save_of_the_state_dict_loads_into_a_fresh_model(kind, tmp_path):
    pytest.importorskip("transformers")
    model = _pruned_hf(kind)
    ids = tiny_hf.windows(seed=1)[0]["input_ids"]
    torch.save(model.state_dict(), tmp_path / "model.pt")
    fresh = tiny_hf.model(kind, seed=1)
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # strict
    assert torch.equal(_outputs(fresh, ids), _outputs(model, ids))


def test_safetensors_of_the_state_dict_loads_into_a_fresh_model(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    model = _pruned_hf("llama")
    ids = tiny_hf.windows(seed=1)[0]["input_ids"]
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    fresh = tiny_hf.model("llama", seed=1)
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(_outputs(fresh, ids), _outputs(model, ids))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_are_packed_and_unpacked_on_the_device_without_a_host_sync():
    layer = nn.Linear(130, 64).cuda()
    mask = torch.rand(64, 130, device="cuda") < 0.5
    torch.cuda.set_sync_debug_mode("error")  # a host synchronisation raises
    try:
        attach(layer, layer.weight, mask)
        back = mask_of(layer)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert layer._buffers[BITS].device == mask.device and torch.equal(back, mask)
