"""Gradual pruning: the schedule's sparsities, pruned weights staying pruned, the continuation
past the plan within alpha, and the model untouched by a failed or interrupted run."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import l0prune
from l0prune import Finetune, Structured
from l0prune.pipeline import gradual as gradual_pruning
from l0prune.pipeline.schedules import scheduled_sparsity


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return l0prune.masks_of(model)


def _record_masks(monkeypatch, model) -> list[dict[str, torch.Tensor]]:
    """The masks after each step's pruning (read when that step's finetuning starts)."""
    seen = []
    real = gradual_pruning.masked_finetune

    def recording(*args, **kwargs):
        seen.append(_masks(model))
        return real(*args, **kwargs)

    monkeypatch.setattr(gradual_pruning, "masked_finetune", recording)
    return seen


@pytest.mark.parametrize("method", ["admm", "obs", "iht"])
def test_pruned_weights_stay_pruned_and_each_step_meets_its_schedule(mlp, monkeypatch, method):
    model, data = mlp
    seen = _record_masks(monkeypatch, model)
    steps, final = 4, 0.9
    report = l0prune.gradual(
        model, data.loader("train"), sparsity=final, validation=data.loader("val"), steps=steps,
        method=method, finetune=Finetune(steps=3, lr=1e-3), progress=False,
        options={"max_iter": 20} if method in ("admm", "iht") else None,
    )
    assert len(seen) == steps
    for before, after in zip(seen, seen[1:], strict=False):
        for name in before:
            assert not (after[name] & ~before[name]).any(), f"layer {name} revived weights"
            assert after[name].sum() < before[name].sum()
    for t, masks in enumerate(seen, start=1):
        target = scheduled_sparsity(t, steps, 0.0, final)
        for mask in masks.values():
            assert int(mask.sum()) == round((1 - target) * mask.numel())
    # The model as left: the last step's masks, exactly zero off them, weights in place.
    assert sorted(seen[-1]) == ["1", "3"] and not torch_prune.is_pruned(model)
    for name, mask in seen[-1].items():
        module = model.get_submodule(name)
        assert torch.equal(l0prune.mask_of(module), mask)
        assert torch.all(module.weight[~mask] == 0)
    assert [t.stage for t in report.trials] == ["gradual"] * steps
    assert report.sparsity == pytest.approx(final, abs=1e-4)
    assert report.trials[-1].sparsity == report.sparsity


def test_convolutions_keep_their_pruned_weights_pruned(cnn, monkeypatch):
    model, data = cnn
    seen = _record_masks(monkeypatch, model)
    l0prune.gradual(model, data.loader("train"), sparsity=0.8, validation=data.loader("val"),
                    steps=2, method="admm", finetune=Finetune(steps=2), progress=False,
                    options={"max_iter": 20})
    assert sorted(seen[0]) == ["0", "2", "6"] and seen[0]["2"].dim() == 4
    for name in seen[0]:
        assert not (seen[1][name] & ~seen[0][name]).any()
        assert int(seen[1][name].sum()) == round(0.2 * seen[1][name].numel())


def test_structured_steps_drop_whole_columns_and_never_bring_one_back(mlp, monkeypatch):
    model, data = mlp
    seen = _record_masks(monkeypatch, model)
    l0prune.gradual(model, data.loader("train"), sparsity=0.75, validation=data.loader("val"),
                    steps=3, method="obs", budget=Structured(group=1),
                    finetune=Finetune(steps=2), progress=False)
    for before, after in zip(seen, seen[1:], strict=False):
        for name in before:
            columns_before, columns_after = before[name].all(dim=0), after[name].all(dim=0)
            assert torch.equal(after[name], columns_after.expand_as(after[name]))
            assert not (columns_after & ~columns_before).any()


def test_alpha_continues_past_the_plan_and_returns_the_sparsest_passing_step(mlp):
    model, data = mlp
    report = l0prune.gradual(
        model, data.loader("train"), sparsity=0.3, alpha=1.1, validation=data.loader("val"),
        steps=2, method="obs", finetune=Finetune(steps=3), progress=False,
    )
    stages = [t.stage for t in report.trials]
    assert stages[:2] == ["gradual", "gradual"] and "gradual continued" in stages
    passing = [t for t in report.trials if t.met]
    assert report.sparsity == max(t.sparsity for t in passing) > 0.3
    assert report.pruned_loss <= 1.1 * report.dense_loss
    measured = l0prune.data.batches.mean_loss(model, data.loader("val"),
                                         l0prune.data.batches.cross_entropy, torch.device("cpu"))
    assert measured == pytest.approx(report.pruned_loss, rel=1e-6)
    # Past the first failure only smaller steps from the best model follow (retries).
    first_failure = next(i for i, t in enumerate(report.trials) if not t.met)
    assert {t.stage for t in report.trials[first_failure + 1:]} <= {"gradual retry"}


class _Boom(Exception):
    pass


def _failing_loss(after: int, error: type[BaseException]):
    calls = {"n": 0}

    def loss_fn(outputs, batch):
        calls["n"] += 1
        if calls["n"] > after:
            raise error("injected")
        return nn.functional.cross_entropy(outputs, batch[-1])
    return loss_fn


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
def test_a_failed_or_interrupted_run_leaves_the_model_exactly_as_it_was(mlp, error):
    model, data = mlp
    state = copy.deepcopy(model.state_dict())
    params = [id(p) for p in model.parameters()]
    # The loss raises during the second step's finetuning: one step has pruned and finetuned.
    with pytest.raises(error):
        l0prune.gradual(model, data.loader("train"), sparsity=0.8,
                        validation=data.loader("val"), steps=3, method="magnitude",
                        finetune=Finetune(steps=2), loss_fn=_failing_loss(12, error),
                        progress=False)
    assert l0prune.masks_of(model) == {}
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [id(p) for p in model.parameters()] == params


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 0.5, "steps": 0}, "steps must be a positive integer"),
    ({"sparsity": 0.5, "method": "exact"}, "cannot keep pruned weights pruned"),
    ({"sparsity": 0.5, "budget": l0prune.NM(2, 4)}, "budget must be an unsized"),
    ({"sparsity": 0.5, "initial_sparsity": 0.6}, "initial_sparsity must be at most sparsity"),
    ({"sparsity": 0.5, "validation": None}, "validation= is needed"),
    ({"sparsity": 1.5}, r"sparsity must be a fraction in \[0, 1\), got 1.5"),
    ({}, "give sparsity="),
    ({"alpha": 0.9}, "alpha must be a number >= 1, got 0.9"),
    ({"sparsity": 0.5, "schedule": "steep"}, "schedule must be one of"),
])
def test_bad_arguments_are_clear_errors_and_change_nothing(mlp, kwargs, message):
    model, data = mlp
    state = copy.deepcopy(model.state_dict())
    kwargs = {"validation": data.loader("val"), **kwargs}
    with pytest.raises(ValueError, match=message):
        l0prune.gradual(model, data.loader("train"), progress=False, **kwargs)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
