"""Snapshot: every change a run can make is undone exactly."""

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import l0prune
from l0prune.model.masks import attach, masks_of
from l0prune.model.snapshot import Snapshot, move


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def _frozen(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "params": [(n, id(p), p.requires_grad) for n, p in model.named_parameters()],
        "buffers": [(n, id(b)) for n, b in model.named_buffers()],
        "modes": [m.training for m in model.modules()],
        "hooks": [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()],
        "non_persistent": [set(m._non_persistent_buffers_set) for m in model.modules()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def _same(a, b):
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    for key in ("params", "buffers", "modes", "hooks", "non_persistent"):
        assert a[key] == b[key], key
    assert len(a["grads"]) == len(b["grads"])
    for g, h in zip(a["grads"], b["grads"], strict=True):
        assert (g is None and h is None) or torch.equal(g, h)


def test_restore_undoes_everything_a_run_does():
    model = _model()
    model[4].weight.requires_grad_(False)
    model(torch.randn(2, 2, 6, 6)).sum().backward()  # the user's own gradients
    before = _frozen(model)
    snapshot = Snapshot(model)

    model.train()  # finetuning: batch-norm statistics and weights move
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 2, 6, 6)).sum().backward()
    optimizer.step()
    attach(model[0], torch.zeros_like(model[0].weight), torch.zeros_like(model[0].weight))
    attach(model[4], model[4].weight, torch.ones_like(model[4].weight))
    l0prune.torch_prune(model[4])  # torch's form: a hook, weight_orig and weight_mask
    model[4].register_forward_pre_hook(lambda m, a: None)
    model[4].weight_orig.requires_grad_(True)
    model.eval()
    assert torch_prune.is_pruned(model) and sorted(masks_of(model)) == ["0", "4"]

    snapshot.restore()
    assert not torch_prune.is_pruned(model) and masks_of(model) == {}
    _same(before, _frozen(model))


def test_restore_can_run_again_and_value_reads_the_capture():
    model = _model()
    snapshot = Snapshot(model)
    dense = model[4].weight.detach().clone()
    for _ in range(2):
        attach(model[4], torch.zeros_like(dense), torch.ones_like(dense))
        snapshot.restore()
        assert torch.equal(model[4].weight, dense)
    assert torch.equal(snapshot.value(model[4].weight), dense)


def test_restore_modes_only_touches_modes():
    model = _model()
    snapshot = Snapshot(model)
    model.eval()
    with torch.no_grad():
        model[4].weight.zero_()
    snapshot.restore_modes()
    assert model.training and not model[4].weight.any()



def test_move_keeps_every_tensor_object():
    """``model.to`` replaces buffers by new tensors; ``move`` keeps them, so a snapshot taken
    before the move still names every tensor of the model."""
    model = _model()
    model(torch.randn(2, 2, 6, 6)).sum().backward()
    before = _frozen(model)
    grads = [id(p.grad) for p in model.parameters()]
    move(model, torch.device("cpu"))
    _same(before, _frozen(model))
    assert [id(p.grad) for p in model.parameters()] == grads
