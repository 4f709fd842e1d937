"""The search's stages on a model whose pass / fail is known exactly: a loss that reads the masks.

The loss is 1 while layer "0" keeps at least half its weights and layer "2" at least a tenth,
and 2 otherwise; with ``alpha = 1.5`` the sparsest passing model has layer "0" at 50 % and
layer "2" at 90 %, whatever the weights.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import l0prune
from l0prune.pipeline import allocation
from l0prune.pipeline.search import RESOLUTION


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(),
                          nn.Linear(32, 2))
    data = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
    return model, data


def _layer_sparsity(module: nn.Module) -> float:
    mask = l0prune.mask_of(module)
    return 0.0 if mask is None else 1.0 - float(mask.float().mean())


def _mask_reading_loss(model):
    def loss_fn(outputs, batch):
        ok = _layer_sparsity(model[0]) <= 0.5 and _layer_sparsity(model[2]) <= 0.9
        return torch.tensor(1.0 if ok else 2.0)
    return loss_fn


def test_a_layer_the_allocation_leaves_dense_is_pruned_while_the_model_passes(monkeypatch):
    model, data = _model_and_data()

    def dense_first_layer(curves, kept_total):
        """An allocation that leaves layer "0" dense and gives layer "2" the rest."""
        first, second = curves
        dense = first.counts[0]
        return {first.target.name: first.family.with_count(dense),
                second.target.name: second.family.with_count(max(kept_total - dense, 0))}

    monkeypatch.setattr(allocation, "spread", dense_first_layer)
    report = l0prune.prune(model, data, alpha=1.5, validation=data, method="magnitude",
                           loss_fn=_mask_reading_loss(model), progress=False)
    layers = {layer.name: layer for layer in report.layers}
    stages = [t.stage for t in report.trials]
    assert "layer" in stages and stages.index("layer") > stages.index("allocated")
    # Layer "0" pruned up to its limit (50 %, to the search's resolution and one weight), layer
    # "2" at its limit (90 %): the allocated stage alone left layer "0" at 0 %.
    assert 0.5 - RESOLUTION - 1 / 128 <= layers["0"].sparsity <= 0.5
    assert 0.9 - RESOLUTION - 1 / 512 <= layers["2"].sparsity <= 0.9
    assert report.pruned_loss == 1.0
    assert report.sparsity == max(t.sparsity for t in report.trials if t.met)


def test_no_layer_stage_when_no_layer_is_left_dense():
    model, data = _model_and_data()
    report = l0prune.prune(model, data, alpha=1.5, validation=data, method="magnitude",
                           loss_fn=_mask_reading_loss(model), progress=False)
    assert "layer" not in {t.stage for t in report.trials}
    assert all(layer.kept < layer.total for layer in report.layers)


def test_reading_a_shuffled_loader_leaves_its_generator_as_it_was():
    model, _ = _model_and_data()
    dataset = TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    loader = DataLoader(dataset, batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(3))
    state = loader.generator.get_state()
    l0prune.prune(model, loader, sparsity=0.5, validation=loader, method="magnitude",
                  progress=False)
    assert torch.equal(loader.generator.get_state(), state)
