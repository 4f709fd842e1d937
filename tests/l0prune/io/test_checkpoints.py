"""Hugging Face checkpoints of pruned models: dense and compressed folders reload to the same
outputs; the compressed one is small; bad calls write nothing."""

import json

import pytest
import torch
from torch import nn

import l0prune
from l0prune.io.checkpoints import WEIGHTS_NAME
from tests.l0prune import tiny_hf

pytest.importorskip("transformers")


def _logits(model, seed=1):
    with torch.no_grad():
        return model(tiny_hf.windows(seed)[0]["input_ids"]).logits


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("budget, layout, limit", [
    ({"sparsity": 0.5}, "bitmask", 0.55),
    ({"sparsity": 0.9}, "bitmask", 0.15),
    ({"budget": l0prune.NM(2, 4)}, "2:4", 0.55),
])
def test_compressed_folder_reloads_to_identical_outputs(tmp_path, kind, budget, layout, limit):
    model = tiny_hf.pruned(kind, **budget)
    expected = _logits(model)
    masks = l0prune.masks_of(model)
    saved = l0prune.save_pretrained(model, tmp_path, format="compressed")
    assert l0prune.masks_of(model).keys() == masks.keys()  # the model is not changed
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "generation_config.json", WEIGHTS_NAME]
    back = l0prune.load_pretrained(tmp_path)
    assert type(back) is type(model)
    assert torch.equal(_logits(back), expected)
    reference = l0prune.model.masks.permanent_state_dict(model)
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, reference[name]), name

    pruned = {f"{n}.weight" for n in masks}
    stored = {t.name: t for t in saved.tensors}
    assert {n for n, t in stored.items() if t.layout != "dense"} == pruned
    assert {stored[n].layout for n in pruned} == {layout}
    ratio = sum(stored[n].bytes for n in pruned) / sum(4 * reference[n].numel() for n in pruned)
    assert ratio <= limit
    config = json.loads((tmp_path / "config.json").read_text())["sparsity_config"]
    assert config["format"] == "sparse-bitmask" and config["weights"] == WEIGHTS_NAME
    assert sorted(config["layouts"][layout]) == sorted(pruned)
    assert config["sparsity_structure"] == ("2:4" if layout == "2:4" else "unstructured")
    zeros = sum(int((reference[n] == 0).sum()) for n in pruned)
    assert config["global_sparsity"] == pytest.approx(
        zeros / sum(reference[n].numel() for n in pruned))


def test_plain_from_pretrained_refuses_a_compressed_folder(tmp_path):
    model = tiny_hf.pruned("llama", sparsity=0.5)
    l0prune.save_pretrained(model, tmp_path, format="compressed")
    with pytest.raises(OSError, match="model.safetensors"):
        type(model).from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["gpt2", "opt"])
def test_dense_folder_is_the_models_own_with_plain_weights(tmp_path, kind):
    model = tiny_hf.pruned(kind, hidden=32, sparsity=0.7)
    expected = _logits(model)
    saved = l0prune.save_pretrained(model, tmp_path)
    assert saved.format == "dense" and (tmp_path / "model.safetensors").is_file()
    assert l0prune.masks_of(model)  # the model is not changed
    back = type(model).from_pretrained(tmp_path).eval()  # any tool, no l0prune
    assert torch.equal(_logits(back), expected)
    assert torch.equal(_logits(l0prune.load_pretrained(tmp_path)), expected)
    assert not any(k.endswith(("_orig", "_mask")) for k in back.state_dict())


def test_compressed_and_dense_sizes(tmp_path):
    model = tiny_hf.pruned("llama", sparsity=0.9)
    dense = l0prune.save_pretrained(model, tmp_path / "dense")
    compressed = l0prune.save_pretrained(model, tmp_path / "compressed", format="compressed")
    assert compressed.weight_bytes < 0.5 * dense.weight_bytes
    assert compressed.weight_bytes == (tmp_path / "compressed" / WEIGHTS_NAME).stat().st_size


def test_bad_calls_write_nothing(tmp_path):
    model = tiny_hf.pruned("llama", hidden=32, sparsity=0.5)
    with pytest.raises(ValueError, match="format must be one of dense, compressed, "
                                         "compressed-tensors, got 'zip'"):
        l0prune.save_pretrained(model, tmp_path / "a", format="zip")
    with pytest.raises(ValueError, match="Hugging Face model .* got Linear; .* l0prune.export"):
        l0prune.save_pretrained(nn.Linear(2, 2), tmp_path / "b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        l0prune.save_pretrained(model, tmp_path / "file", format="compressed")
    with pytest.raises(ValueError, match="holds no config.json"):
        l0prune.load_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("weights", ["../outside.safetensors", "/tmp/outside.safetensors",
                                     "link.safetensors"])
def test_compressed_weights_outside_the_folder_are_refused(tmp_path, weights):
    folder = tmp_path / "model"
    l0prune.save_pretrained(tiny_hf.pruned("gpt2", sparsity=0.5), folder, format="compressed")
    (folder / WEIGHTS_NAME).rename(tmp_path / "outside.safetensors")
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["sparsity_config"]["weights"] = weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"sparsity_config.weights must be a path inside "
                                         f".*model, got '{weights}'"):
        l0prune.load_pretrained(folder)


def test_a_weight_dropped_from_a_compressed_folder_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    l0prune.save_pretrained(tiny_hf.pruned("gpt2", hidden=32, sparsity=0.5), tmp_path,
                            format="compressed")
    path = tmp_path / WEIGHTS_NAME
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    tensors = load_file(str(path))
    layouts = json.loads(metadata["layouts"])
    name = "transformer.h.1.attn.c_proj.weight"
    for key in [k for k in tensors if k == name or k.startswith(f"{name}.")]:
        del tensors[key]
    del layouts[name]
    save_file(tensors, str(path), metadata={**metadata, "layouts": json.dumps(layouts)})
    with pytest.raises(ValueError, match=f"lack '{name}' .* refused rather than initialised"):
        l0prune.load_pretrained(tmp_path)


@pytest.mark.parametrize("format", ["dense", "compressed"])
def test_a_config_asking_for_more_layers_than_the_weights_hold_is_refused(tmp_path, format):
    model = tiny_hf.pruned("gpt2", hidden=32, sparsity=0.5)
    l0prune.save_pretrained(model, tmp_path, format=format)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_layer"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lack 'transformer.h.2.ln_1.weight' \\(12 of the "
                                         "model's tensors are missing\\)"):
        l0prune.load_pretrained(tmp_path)


def test_weights_of_another_shape_than_the_config_gives_are_refused(tmp_path):
    l0prune.save_pretrained(tiny_hf.pruned("gpt2", hidden=32, sparsity=0.5), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_embd"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not have the shapes config.json gives them"):
        l0prune.load_pretrained(tmp_path)


def test_keyword_arguments_reach_from_pretrained(tmp_path):
    model = tiny_hf.pruned("llama", hidden=32, sparsity=0.5)
    reference = l0prune.model.masks.permanent_state_dict(model)
    for format in ("dense", "compressed", "compressed-tensors"):
        l0prune.save_pretrained(model, tmp_path / format, format=format)
        back = l0prune.load_pretrained(tmp_path / format, dtype=torch.bfloat16)
        assert back.dtype == torch.bfloat16, format
        weight = "model.layers.0.mlp.up_proj.weight"
        assert torch.equal(back.state_dict()[weight], reference[weight].to(torch.bfloat16))


def test_the_recipe_is_written_with_the_folder(tmp_path):
    model = tiny_hf.pruned("llama", hidden=32, sparsity=0.5)
    config = l0prune.PruneConfig(sparsity=0.5, method="obs")
    l0prune.save_pretrained(model, tmp_path, recipe=config)
    assert l0prune.PruneConfig.from_toml((tmp_path / "recipe.toml").read_text()) == config
    l0prune.save_pretrained(model, tmp_path / "from-dict", recipe=config.to_dict())
    assert (tmp_path / "from-dict" / "recipe.toml").read_text() == config.to_toml()
    with pytest.raises(ValueError, match="recipe must be a PruneConfig, its dict .* got list"):
        l0prune.save_pretrained(model, tmp_path / "x", recipe=["sparsity"])
    with pytest.raises(ValueError, match="max_shard_size applies to the dense and "
                                         "compressed-tensors formats"):
        l0prune.save_pretrained(model, tmp_path / "x", format="compressed", max_shard_size=10)
    assert not (tmp_path / "x").exists()
