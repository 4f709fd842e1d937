"""Export: a dense state dict with the dense keys, and a compact file that loads back exactly."""

import pytest
import torch
from torch import nn

from l0prune.exporting import export, load_sparse
from l0prune.masks import attach


def _pruned_model(density: float, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    g = torch.Generator().manual_seed(seed)
    for layer in (model[0], model[2]):
        attach(layer, layer.weight.detach().clone(), torch.rand(layer.weight.shape,
                                                                generator=g) < density)
    return model


def test_dense_file_has_the_dense_keys_and_loads_into_a_dense_model(tmp_path):
    model = _pruned_model(0.1)
    dense_keys = set(nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
                     .state_dict())
    report = export(model, tmp_path / "model.pt")
    state = torch.load(report.path, weights_only=True)
    assert set(state) == dense_keys
    fresh = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    fresh.load_state_dict(state)
    x = torch.randn(4, 128)
    assert torch.equal(fresh(x), model(x))
    assert report.sparse_path == str(tmp_path / "model.sparse.pt")


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 1.0])
def test_sparse_file_loads_back_bit_for_bit(tmp_path, density):
    model = _pruned_model(density)
    report = export(model, tmp_path / "m.pt", tmp_path / "m.compact.pt")
    dense = torch.load(report.path, weights_only=True)
    sparse = load_sparse(report.sparse_path)
    assert dense.keys() == sparse.keys()
    for key in dense:
        assert sparse[key].dtype == dense[key].dtype and torch.equal(sparse[key], dense[key])
    encodings = {t.name: t.encoding for t in report.tensors}
    expected = {0.01: "indices", 0.1: "bitmask", 0.5: "bitmask", 1.0: "dense"}[density]
    assert encodings["0.weight"] == expected and encodings["0.bias"] == "dense"


def test_sparse_file_shrinks_with_density(tmp_path):
    sizes = []
    for density in (0.5, 0.2, 0.05):
        report = export(_pruned_model(density), tmp_path / f"{density}.pt")
        sizes.append(report.sparse_bytes)
        assert report.dense_bytes == pytest.approx(4 * (128 * 256 + 256 + 256 * 10 + 10),
                                                   rel=0.05)
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[2] < 0.15 * report.dense_bytes
    assert "% of dense" in str(report)


def test_bad_paths_and_files(tmp_path):
    model = _pruned_model(0.5)
    with pytest.raises(ValueError, match="must differ"):
        export(model, tmp_path / "a.pt", tmp_path / "a.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an l0prune sparse file"):
        load_sparse(tmp_path / "plain.pt")
