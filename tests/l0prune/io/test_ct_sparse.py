"""compressed-tensors' sparse layouts: written as its 0.13 release writes them, read back bit for
bit (one file or shards), and folders whose weights are incomplete or crafted are refused."""

import json

import numpy
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import l0prune
from l0prune.io import ct_sparse
from l0prune.model.masks import permanent_state_dict
from tests.l0prune import tiny_hf

pytest.importorskip("transformers")


def _logits(model):
    with torch.no_grad():
        return model(tiny_hf.windows(1)[0]["input_ids"]).logits


def _stored(folder):
    """Every tensor of a folder's weight files, by name."""
    state = {}
    for path in folder.glob("*.safetensors"):
        state.update(load_file(str(path)))
    return state


def test_bitmask_parts_are_those_compressed_tensors_writes():
    weight = torch.randn(5, 19) * (torch.rand(5, 19) < 0.4)
    parts = ct_sparse.encode(weight, "sparse-bitmask")
    mask = (weight != 0).numpy()
    assert list(parts) == ["shape", "compressed", "bitmask", "row_offsets"]
    assert parts["shape"].dtype == torch.int64 and parts["shape"].tolist() == [5, 19]
    assert parts["bitmask"].dtype == torch.uint8
    assert numpy.array_equal(parts["bitmask"].numpy(),
                             numpy.packbits(mask, axis=-1, bitorder="little"))
    assert torch.equal(parts["compressed"], weight[weight != 0])
    counts = torch.from_numpy(mask.sum(axis=-1))
    assert parts["row_offsets"].dtype == torch.int64
    assert torch.equal(parts["row_offsets"], torch.cumsum(counts, 0) - counts)


def test_two_four_parts_are_those_compressed_tensors_writes():
    weight = torch.zeros(3, 8)
    weight[:, 1], weight[:, 2], weight[:, 4], weight[:, 7] = 1.0, 2.0, 3.0, 4.0
    weight[2, 4:] = torch.tensor([0.0, 5.0, 0.0, 0.0])  # one non-zero: the first zero joins it
    parts = ct_sparse.encode(weight, "sparse-24-bitmask")
    assert list(parts) == ["shape", "compressed", "bitmask"]
    assert parts["shape"].tolist() == [[3], [8]] and parts["shape"].dtype == torch.int64
    assert parts["compressed"].tolist() == [[1.0, 2.0, 3.0, 4.0]] * 2 + [[1.0, 2.0, 0.0, 5.0]]
    expected = numpy.zeros((3, 8), dtype=bool)
    expected[:, [1, 2, 4, 7]] = True
    expected[2, 4:] = [True, True, False, False]
    assert numpy.array_equal(parts["bitmask"].numpy(),
                             numpy.packbits(expected, axis=-1, bitorder="little"))


@pytest.mark.parametrize("kind, budget, format", [
    ("llama", {"sparsity": 0.6}, "sparse-bitmask"),
    ("llama", {"budget": "2:4"}, "sparse-24-bitmask"),
    ("gpt2", {"sparsity": 0.6}, "sparse-bitmask"),
    ("gpt2", {"budget": "2:4"}, "sparse-bitmask"),  # Conv1D's 2:4 groups run down its columns
])
def test_folder_round_trips_bit_for_bit(tmp_path, kind, budget, format):
    model = tiny_hf.pruned(kind, **budget)
    expected = _logits(model)
    reference = permanent_state_dict(model)
    saved = l0prune.save_pretrained(model, tmp_path, format="compressed-tensors",
                                    recipe="sparsity = 0.6\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "recipe.toml"]
    quantization = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    pruned = list(l0prune.masks_of(model))
    assert quantization == {
        "quant_method": "compressed-tensors", "version": "0.13.0", "transform_config": {},
        "sparsity_config": {
            "format": format, "targets": pruned, "ignore": [], "registry_requires_subclass": False,
            "sparsity_structure": "2:4" if format == "sparse-24-bitmask" else "unstructured",
            "global_sparsity": pytest.approx(
                sum(int((reference[f"{n}.weight"] == 0).sum()) for n in pruned)
                / sum(reference[f"{n}.weight"].numel() for n in pruned)),
        }}
    stored = _stored(tmp_path)
    parts = ct_sparse._PARTS[format]
    for name in pruned:
        assert f"{name}.weight" not in stored
        assert {k for k in stored if k.startswith(f"{name}.") and k != f"{name}.bias"} == {
            f"{name}.{p}" for p in parts}
    assert {t.name for t in saved.tensors if t.layout != "dense"} == {f"{n}.weight"
                                                                     for n in pruned}
    back = l0prune.load_pretrained(tmp_path)
    assert type(back) is type(model)
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert torch.equal(_logits(back), expected)


def test_shards_and_their_index_round_trip(tmp_path):
    model = tiny_hf.pruned("llama", sparsity=0.5)
    reference = permanent_state_dict(model)
    l0prune.save_pretrained(model, tmp_path, format="compressed-tensors", max_shard_size=40_000)
    index = json.loads((tmp_path / ct_sparse.INDEX_NAME).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert not (tmp_path / "model.safetensors").exists()
    sizes = {}
    for name in files:
        with safe_open(str(tmp_path / name), framework="pt") as file:
            keys = set(file.keys())
        assert keys == {k for k, f in index["weight_map"].items() if f == name}
        sizes[name] = sum(t.numel() * t.element_size()
                          for t in load_file(str(tmp_path / name)).values())
    assert index["metadata"]["total_size"] == sum(sizes.values())
    back = l0prune.load_pretrained(tmp_path)
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    # saved again in one file: the old shards and index go, so the new file is what is read
    l0prune.save_pretrained(model, tmp_path, format="compressed-tensors")
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


def _saved(tmp_path, kind="llama", **budget):
    model = tiny_hf.pruned(kind, hidden=32, **(budget or {"sparsity": 0.5}))
    l0prune.save_pretrained(model, tmp_path, format="compressed-tensors")
    return model


def _rewrite(folder, change):
    """Apply ``change`` to the tensors of ``model.safetensors`` and write them back."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_a_missing_tensor_is_refused_by_name(tmp_path):
    _saved(tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(ValueError, match="lack 'model.norm.weight' .* refused rather than "
                                         "initialised at random"):
        l0prune.load_pretrained(tmp_path)


def test_a_missing_part_is_refused_by_name(tmp_path):
    _saved(tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.bitmask"))
    with pytest.raises(ValueError, match="'model.layers.1.mlp.up_proj' lacks "
                                         "'model.layers.1.mlp.up_proj.bitmask'"):
        l0prune.load_pretrained(tmp_path)


def test_more_layers_in_config_than_in_the_weights_is_refused(tmp_path):
    _saved(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lack 'model.layers.2.self_attn.q_proj.weight'"):
        l0prune.load_pretrained(tmp_path)


def test_an_index_naming_a_file_outside_or_missing_is_refused(tmp_path):
    _saved(tmp_path)
    keys = list(load_file(str(tmp_path / "model.safetensors")))
    for name, message in (("../model.safetensors", "not a file of the folder"),
                          ("model-00002-of-00002.safetensors", "which is missing")):
        weight_map = dict.fromkeys(keys, "model.safetensors")
        weight_map[keys[0]] = name
        (tmp_path / ct_sparse.INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ValueError, match=message):
            l0prune.load_pretrained(tmp_path)


def test_a_bitmask_that_does_not_fit_its_shape_is_refused_before_decoding(tmp_path):
    _saved(tmp_path)
    name = "model.layers.0.mlp.down_proj"

    def inflate(tensors):  # a declared shape far beyond what the file holds
        tensors[f"{name}.shape"] = torch.tensor([10**6, 10**6])

    _rewrite(tmp_path, inflate)
    with pytest.raises(ValueError, match=f"{name}.bitmask of shape .* does not fit a weight of "
                                         r"shape \[1000000, 1000000\]"):
        l0prune.load_pretrained(tmp_path)


def test_values_that_the_mask_does_not_count_are_refused(tmp_path):
    _saved(tmp_path)
    name = "model.layers.0.mlp.down_proj"
    _rewrite(tmp_path, lambda t: t.update({f"{name}.compressed": t[f"{name}.compressed"][1:]}))
    with pytest.raises(ValueError, match=f"{name}.bitmask marks .* entries for"):
        l0prune.load_pretrained(tmp_path)


def test_a_quantized_checkpoint_is_refused(tmp_path):
    _saved(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["config_groups"] = {"group_0": {"targets": ["Linear"]}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantized compressed-tensors checkpoint"):
        l0prune.load_pretrained(tmp_path)
