"""Masked finetuning: masks fixed, pruned weights exactly zero, best checkpoint kept."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import l0prune
from l0prune.data.batches import cross_entropy, mean_loss
from l0prune.model.masks import attach, mask_of, masked_weight
from l0prune.pipeline.finetune import Finetune, masked_finetune

CPU = torch.device("cpu")


def _pruned(mlp):
    model, data = mlp
    g = torch.Generator().manual_seed(0)
    masks = {}
    for name in ("1", "3"):
        layer = dict(model.named_modules())[name]
        masks[name] = torch.rand(layer.weight.shape, generator=g) < 0.2
        attach(layer, layer.weight.detach().clone(), masks[name])
    return model, data, masks


def test_masks_stay_fixed_and_pruned_weights_zero(mlp):
    model, data, masks = _pruned(mlp)
    before = copy.deepcopy(model.state_dict())
    params = {name: model.get_submodule(name).weight for name in masks}
    done = masked_finetune(model, Finetune(data=data.loader("train"), epochs=2, lr=1e-2),
                           cross_entropy, CPU)
    assert done.steps == 2 * len(data.loader("train")) and done.loss is None
    assert not torch_prune.is_pruned(model) and list(model.state_dict()) == list(before)
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        assert layer.weight is params[name]  # in place again, the same parameter object
        assert torch.equal(mask_of(layer), mask)
        assert torch.equal(layer.weight[~mask], torch.zeros(int((~mask).sum())))
        assert not torch.equal(layer.weight, before[f"{name}.weight"])  # it trained
    assert not model.training


def test_a_model_in_torchs_form_trains_in_it(mlp):
    model, data, masks = _pruned(mlp)
    l0prune.torch_prune(model)
    masked_finetune(model, Finetune(data=data.loader("train"), steps=3, lr=1e-2,
                                    keep_best=True), cross_entropy, CPU,
                    validate=lambda: mean_loss(model, data.loader("val"), cross_entropy, CPU))
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        assert torch_prune.is_pruned(layer) and torch.equal(layer.weight_mask, mask.float())
        assert torch.equal(layer.weight, masked_weight(layer))  # refreshed after the last load


def test_steps_cycle_over_the_data_and_the_rng_is_left_alone():
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(3)]
    state = torch.random.get_rng_state()
    first = copy.deepcopy(model)
    assert masked_finetune(model, Finetune(steps=7), cross_entropy, CPU, data=batches,
                           seed=3).steps == 7
    assert torch.equal(torch.random.get_rng_state(), state)
    masked_finetune(first, Finetune(steps=7), cross_entropy, CPU, data=batches, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  first.state_dict().values(), strict=True))


def test_a_loader_with_its_own_generator_gives_the_same_batches_every_call():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    dataset = torch.utils.data.TensorDataset(torch.randn(40, 3), torch.randint(0, 2, (40,)))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)
    )
    state = loader.generator.get_state()
    config = Finetune(data=loader, epochs=2, lr=1e-2)  # checks the data: reads one batch
    assert torch.equal(loader.generator.get_state(), state)
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    masked_finetune(first, config, cross_entropy, CPU)
    assert torch.equal(loader.generator.get_state(), state)  # the caller's loader is as it was
    masked_finetune(second, config, cross_entropy, CPU)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                  second.state_dict().values(), strict=True))


def test_keep_best_never_raises_the_validation_loss(mlp):
    model, data, _ = _pruned(mlp)
    validation = data.loader("val")

    seen = []

    def validate():
        seen.append(mean_loss(model, validation, cross_entropy, CPU))
        return seen[-1]

    config = Finetune(data=data.loader("train", batch_size=16), epochs=3, lr=0.5)  # too high
    done = masked_finetune(model, config, cross_entropy, CPU, validate=validate)
    assert len(seen) == 4  # before, and after each of the 3 epochs
    best = min(range(4), key=seen.__getitem__)
    assert (done.loss_before, done.loss, done.epoch) == (seen[0], seen[best], best)
    assert done.loss == pytest.approx(validate(), rel=1e-6)  # the best checkpoint is the model


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 2, "steps": 3}, "not both"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"steps": 1.5}, "steps must be a positive integer"),
        ({"lr": -1}, "lr must be a positive number"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"keep_best": 1}, "keep_best"),
        ({"data": iter([])}, "re-iterable"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Finetune(**kwargs)


def test_a_diverging_loss_is_an_error():
    model = nn.Linear(2, 2)
    batches = [(torch.randn(2, 2), torch.zeros(2, dtype=torch.long))]

    def nan_loss(outputs, batch):
        return outputs.sum() * float("nan")

    with pytest.raises(ValueError, match="diverged"):
        masked_finetune(model, Finetune(steps=1), nan_loss, CPU, data=batches)
