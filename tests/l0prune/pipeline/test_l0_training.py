"""Whole-model L0 training: the controller reaches the sparsity asked, the projection meets it
exactly, masks are stored the torch way, and a failed run leaves the model as it was."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import l0prune
from l0prune import Finetune, Structured
from l0prune.data.batches import cross_entropy, mean_loss
from solvers import gates


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_the_controller_reaches_the_sparsity_and_the_projection_meets_it_exactly(mlp, sparsity):
    model, data = mlp
    report = l0prune.train_l0(
        model, data.loader("train", batch_size=128, shuffle=True), sparsity=sparsity,
        validation=data.loader("val"), epochs=2, finetune=Finetune(steps=3), progress=False,
    )
    assert abs(report.expected_sparsity - sparsity) <= 0.01  # before the projection
    assert report.kept == round((1 - sparsity) * report.total)  # after it, exactly
    masks = l0prune.masks_of(model)
    assert sorted(masks) == ["1", "3"] and not torch_prune.is_pruned(model)
    assert sum(int(mask.sum()) for mask in masks.values()) == report.kept
    for name, mask in masks.items():
        assert torch.all(model.get_submodule(name).weight[~mask] == 0)
    assert report.pruned_loss == pytest.approx(
        mean_loss(model, data.loader("val"), cross_entropy, torch.device("cpu")), rel=1e-6)
    assert report.pruned_loss <= report.loss_before_finetune  # finetuning keeps its best epoch
    assert [t.stage for t in report.trials] == ["l0", "l0"]
    assert report.trials[-1].target == pytest.approx(sparsity)


def test_the_expected_count_is_the_gate_math_of_solvers_gates(mlp):
    from l0prune.model.targets import select_targets
    from l0prune.pipeline.l0_training import _L0Run

    model, data = mlp
    targets = select_targets(model, ["1", "3", "5"])
    run = _L0Run(model, targets, l0prune.Unstructured(), loss_fn=cross_entropy,
                 device=torch.device("cpu"), validation=None, seed=0)
    expected = sum(float(gates.prob_nonzero(g.log_alpha.detach()).sum()) for g in run.gates)
    expected /= run.total
    with torch.no_grad():
        assert float(run.density()) == pytest.approx(expected, rel=1e-6)
        mu = run.constrain(0.3)
        assert float(run.density()) == pytest.approx(0.3, abs=1e-5) and float(mu) > 0


def test_structured_gates_drop_whole_input_columns(cnn):
    model, data = cnn
    report = l0prune.train_l0(model, data.loader("train", batch_size=128), sparsity=0.6,
                              epochs=1, budget=Structured(group=1), progress=False)
    assert abs(report.expected_sparsity - 0.6) <= 0.01
    assert report.kept <= round(0.4 * report.total)
    for name, kernel in (("0", 9), ("2", 9), ("6", 1)):
        mask = l0prune.mask_of(model.get_submodule(name))
        columns = mask.reshape(mask.shape[0], -1)
        assert torch.equal(columns, columns[:1].expand_as(columns))  # the same in every row
        channels = columns[0].reshape(-1, kernel)
        assert torch.equal(channels, channels[:, :1].expand_as(channels))  # whole channels
        assert channels[:, 0].any()  # every layer keeps at least one channel


def test_alpha_returns_a_model_within_the_tolerance(mlp):
    model, data = mlp
    report = l0prune.train_l0(model, data.loader("train", batch_size=128), alpha=1.5,
                              validation=data.loader("val"), epochs=3,
                              finetune=Finetune(steps=2), progress=False)
    assert report.alpha == 1.5 and report.sparsity > 0
    assert report.pruned_loss <= 1.5 * report.dense_loss
    passing = [t for t in report.trials if t.met]
    assert report.sparsity == pytest.approx(max(t.sparsity for t in passing), abs=1e-9)


def test_alpha_with_no_projection_within_it_returns_the_model_as_given(mlp, monkeypatch):
    from l0prune.pipeline.l0_training import _L0Run

    model, data = mlp
    state = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(_L0Run, "evaluate", lambda self, masks=None: math.inf)
    report = l0prune.train_l0(model, data.loader("train", batch_size=128), alpha=1.05,
                              validation=data.loader("val"), epochs=1,
                              finetune=Finetune(steps=2), progress=False)
    assert report.sparsity == 0 and report.pruned_loss == report.dense_loss
    assert report.trials and not any(t.met for t in report.trials)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)
    assert all(bool(l0prune.mask_of(model.get_submodule(n)).all()) for n in ("1", "3"))


def _failing_loss(after: int, error: type[BaseException]):
    calls = {"n": 0}

    def loss_fn(outputs, batch):
        calls["n"] += 1
        if calls["n"] > after:
            raise error("injected")
        return nn.functional.cross_entropy(outputs, batch[-1])
    return loss_fn


class _Boom(Exception):
    pass


@pytest.mark.parametrize("after", [5, 40])  # during the gated training / during finetuning
@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
def test_a_failed_or_interrupted_run_leaves_the_model_exactly_as_it_was(mlp, error, after):
    model, data = mlp
    state = copy.deepcopy(model.state_dict())
    params = [id(p) for p in model.parameters()]
    with pytest.raises(error):
        l0prune.train_l0(model, data.loader("train", batch_size=128), sparsity=0.8,
                         validation=data.loader("val"), epochs=2, finetune=Finetune(epochs=2),
                         loss_fn=_failing_loss(after, error), progress=False)
    assert l0prune.masks_of(model) == {}
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [id(p) for p in model.parameters()] == params
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 0.5, "epochs": 0}, "epochs must be a positive integer"),
    ({"sparsity": 0.5, "warmup": 1.5}, r"warmup must be a fraction in \[0, 1\]"),
    ({"sparsity": 0.5, "budget": Structured(sparsity=0.5)}, "already fixes the sparsity"),
    ({"sparsity": 0.5, "gate_lr": 0}, "gate_lr must be a positive number"),
    ({"alpha": 1.05}, "alpha needs validation= batches"),
])
def test_bad_arguments_are_clear_errors(mlp, kwargs, message):
    model, data = mlp
    with pytest.raises(ValueError, match=message):
        l0prune.train_l0(model, data.loader("train"), progress=False, **kwargs)
