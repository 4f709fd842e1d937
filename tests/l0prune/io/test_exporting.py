"""Export: a dense state dict with the dense keys, and a compact file that loads back exactly."""

import pytest
import torch
from torch import nn

from l0prune.io.exporting import export, load_sparse
from l0prune.model.masks import attach


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


def _crafted(tmp_path, **entry):
    path = tmp_path / "crafted.sparse.pt"
    torch.save({"format": "l0prune-sparse", "version": 1, "tensors": {"w": entry}}, path)
    return path


@pytest.mark.parametrize(("entry", "message"), [
    ({"encoding": "dense", "values": "not a tensor"}, "values must be a tensor, got str"),
    ({"encoding": "dense", "values": [1.0, 2.0]}, "values must be a tensor, got list"),
    ({"encoding": "zip", "values": torch.ones(2)}, "no known encoding"),
    ({"encoding": "indices", "shape": [4], "values": torch.ones(1),
      "indices": torch.tensor([-1], dtype=torch.int32)}, r"indices must increase within \[0, 4\)"),
    ({"encoding": "indices", "shape": [4], "values": torch.ones(1),
      "indices": torch.tensor([4], dtype=torch.int32)}, r"indices must increase within \[0, 4\)"),
    ({"encoding": "indices", "shape": [4], "values": torch.ones(2),
      "indices": torch.tensor([1, 1], dtype=torch.int32)}, "indices must increase"),
    ({"encoding": "indices", "shape": [4], "values": torch.ones(2),
      "indices": torch.tensor([1.0, 2.0])}, "indices must be an int32 / int64 tensor"),
    ({"encoding": "bitmask", "shape": [64, 64], "values": torch.ones(1),
      "bits": torch.tensor([128], dtype=torch.uint8)}, "shape .64, 64. needs 512 mask bytes"),
    ({"encoding": "bitmask", "shape": [8], "values": torch.ones(2),
      "bits": torch.tensor([128], dtype=torch.uint8)}, "marks 1 entries of 8 for 2 values"),
    ({"encoding": "bitmask", "shape": [4], "values": torch.ones(1),
      "bits": torch.tensor([129], dtype=torch.uint8)}, "marks 1 entries of 4 for 1 values"),
    ({"encoding": "bitmask", "shape": [2, -4], "values": torch.ones(1),
      "bits": torch.tensor([128], dtype=torch.uint8)}, "shape must be a list of non-negative"),
    ({"encoding": "indices", "shape": [4], "values": torch.ones(1, dtype=torch.int64),
      "indices": torch.tensor([0])}, "values must be a 1-D floating tensor"),
])
def test_load_sparse_refuses_an_inconsistent_file(tmp_path, entry, message):
    """Each entry once came back as it was, wrapped a negative index, or failed inside torch."""
    with pytest.raises(ValueError, match=f"crafted.sparse.pt'?: tensor 'w'.*{message}"):
        load_sparse(_crafted(tmp_path, **entry))


def test_load_sparse_refuses_a_huge_shape_from_a_tiny_file(tmp_path):
    """A few hundred bytes declaring 5000 x 5000 zeros (100 MB) is refused before allocating
    (a real export of such a tensor is a bitmask of 3 MB: within the limit)."""
    path = _crafted(tmp_path, encoding="indices", shape=[5000, 5000], values=torch.ones(0),
                    indices=torch.zeros(0, dtype=torch.int32))
    assert path.stat().st_size < 2000
    with pytest.raises(ValueError, match="declares 100,000,000 bytes of tensors"):
        load_sparse(path)
    layer = nn.Linear(5000, 5000, bias=False)
    attach(layer, layer.weight.detach(), torch.zeros(5000, 5000, dtype=torch.bool))
    report = export(layer, tmp_path / "zero.pt")
    assert torch.equal(load_sparse(report.sparse_path)["weight"], torch.zeros(5000, 5000))


def test_safetensors_suffix_writes_safetensors(tmp_path):
    from safetensors.torch import load_file

    model = _pruned_model(0.3)
    report = export(model, tmp_path / "model.safetensors")
    assert report.sparse_path == str(tmp_path / "model.sparse.safetensors")
    for path in (report.path, report.sparse_path):
        with open(path, "rb") as file:  # 8-byte header length, then the JSON header
            size = int.from_bytes(file.read(8), "little")
            assert file.read(1) == b"{" and size < 10_000
    state = load_file(report.path)
    fresh = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    fresh.load_state_dict(state)
    x = torch.randn(4, 128)
    assert torch.equal(fresh(x), model(x))
    sparse = load_sparse(report.sparse_path)
    assert sparse.keys() == state.keys() and all(torch.equal(sparse[k], state[k]) for k in state)
    assert {t.name: t.encoding for t in report.tensors}["0.weight"] == "bitmask"
    assert report.sparse_bytes < 0.45 * report.dense_bytes


def test_safetensors_export_of_tied_transposed_weights(tmp_path):
    """GPT-2: ``Conv1D`` weights stored in x out, and the head tied to the embedding."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16)).eval()
    ids = torch.randint(0, 64, (1, 8))
    import l0prune

    l0prune.prune(model, [{"input_ids": ids}], budget=l0prune.NM(2, 4), method="wanda",
                  progress=False)
    report = export(model, tmp_path / "gpt2.safetensors")
    state = load_sparse(report.sparse_path)
    layouts = {t.name: t.encoding for t in report.tensors}
    assert layouts["transformer.h.0.attn.c_attn.weight"] == "2:4"
    fresh = transformers.GPT2LMHeadModel(model.config).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)


@pytest.mark.parametrize("path, sparse", [("m.txt", None), ("m.pt", "m.sparse"),
                                          ("m", None)])
def test_unknown_suffixes_are_refused_before_writing(tmp_path, path, sparse):
    with pytest.raises(ValueError, match=r"must end in \.safetensors .* or \.pt"):
        export(_pruned_model(0.5), tmp_path / path, tmp_path / sparse if sparse else None)
    assert list(tmp_path.iterdir()) == []


_PEAK_SCRIPT = """
import resource, sys, torch
from l0prune.io.exporting import load_sparse
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_sparse(sys.argv[1])
except ValueError as err:
    print("refused:", err)
print("peak MiB:", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.parametrize("entry", [
    {"encoding": "bitmask", "shape": [800_000_000], "values": torch.ones(0),
     "bits": torch.full((1,), 255, dtype=torch.uint8).expand(100_000_000)},
    {"encoding": "indices", "shape": [2_000_000_000], "values": torch.ones(1).expand(10**9),
     "indices": torch.zeros(1, dtype=torch.int64).expand(10**9)},
])
def test_a_tiny_file_of_expanded_views_is_refused_without_allocating(tmp_path, entry):
    """Stride-0 tensors survive torch.load(weights_only=True): a 2 KB file declaring 100 M
    mask bytes or 1e9 indices is refused before anything of that size exists."""
    import subprocess
    import sys

    path = _crafted(tmp_path, **entry)
    assert path.stat().st_size < 3000
    found = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True,
                           text=True, check=True).stdout
    assert "whose data the file does not hold" in found
    assert float(found.split("peak MiB:")[1]) < 100


def test_a_deflated_archive_is_refused_before_torch_unpacks_it(tmp_path):
    import zipfile

    layer = nn.Linear(1000, 1000, bias=False)
    attach(layer, torch.zeros(1000, 1000), torch.ones(1000, 1000, dtype=torch.bool))
    plain = export(layer, tmp_path / "m.pt").sparse_path
    deflated = tmp_path / "deflated.sparse.pt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(deflated, "w",
                                                           zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
    with pytest.raises(ValueError, match=r"unpacks to [\d,]+ bytes, more than its"):
        load_sparse(deflated)
    assert load_sparse(plain)["weight"].count_nonzero() == 0


def _crafted_compressed(tmp_path, tensors, layouts):
    import json

    from safetensors.torch import save_file

    path = tmp_path / "crafted.safetensors"
    metadata = {"format": "l0prune-sparse-bitmask", "version": "1"}
    if layouts is not None:
        metadata["layouts"] = json.dumps(layouts)
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(("tensors", "layouts", "message"), [
    ({"w": torch.ones(2)}, None, "no readable 'layouts' entry"),
    ({"w": torch.ones(2)}, {"w": {"layout": "zip"}}, "unknown layout"),
    ({"w.shape": torch.tensor([100_000, 100_000]), "w.compressed": torch.ones(1),
      "w.bitmask": torch.zeros(1, 1, dtype=torch.uint8),
      "w.row_offsets": torch.zeros(1, dtype=torch.int32)},
     {"w": {"layout": "bitmask"}}, r"w.bitmask of shape \[1, 1\] does not fit"),
    ({"w.shape": torch.tensor([2, 8]), "w.compressed": torch.ones(2, dtype=torch.int64),
      "w.bitmask": torch.full((2, 1), 1, dtype=torch.uint8),
      "w.row_offsets": torch.zeros(2, dtype=torch.int32)},
     {"w": {"layout": "bitmask"}}, "cannot be the values"),
    ({"w.shape": torch.tensor([-4, 4]), "w.compressed": torch.ones(2, 2),
      "w.indices": torch.zeros(4, 1, dtype=torch.uint8)},
     {"w": {"layout": "2:4"}}, "impossible shape"),
])
def test_read_compressed_refuses_parts_that_do_not_fit_from_the_header(tmp_path, tensors,
                                                                       layouts, message):
    from l0prune.io.compressed_file import read_compressed

    with pytest.raises(ValueError, match=message):
        read_compressed(_crafted_compressed(tmp_path, tensors, layouts))
