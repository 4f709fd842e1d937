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


def _windows(seed=0, n=3, length=16):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, tiny_hf.VOCAB, (1, length), generator=g)}
            for _ in range(n)]


def _pruned(kind, hidden=64, **budget):
    model = tiny_hf.model(kind, hidden)
    l0prune.prune(model, _windows(), method="obs", progress=False, **budget)
    return model


def _logits(model, seed=1):
    with torch.no_grad():
        return model(_windows(seed)[0]["input_ids"]).logits


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("budget, layout, limit", [
    ({"sparsity": 0.5}, "bitmask", 0.55),
    ({"sparsity": 0.9}, "bitmask", 0.15),
    ({"budget": l0prune.NM(2, 4)}, "2:4", 0.55),
])
def test_compressed_folder_reloads_to_identical_outputs(tmp_path, kind, budget, layout, limit):
    model = _pruned(kind, **budget)
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
    model = _pruned("llama", sparsity=0.5)
    l0prune.save_pretrained(model, tmp_path, format="compressed")
    with pytest.raises(OSError, match="model.safetensors"):
        type(model).from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["gpt2", "opt"])
def test_dense_folder_is_the_models_own_with_plain_weights(tmp_path, kind):
    model = _pruned(kind, hidden=32, sparsity=0.7)
    expected = _logits(model)
    saved = l0prune.save_pretrained(model, tmp_path)
    assert saved.format == "dense" and (tmp_path / "model.safetensors").is_file()
    assert l0prune.masks_of(model)  # the model is not changed
    back = type(model).from_pretrained(tmp_path).eval()  # any tool, no l0prune
    assert torch.equal(_logits(back), expected)
    assert torch.equal(_logits(l0prune.load_pretrained(tmp_path)), expected)
    assert not any(k.endswith(("_orig", "_mask")) for k in back.state_dict())


def test_compressed_and_dense_sizes(tmp_path):
    model = _pruned("llama", sparsity=0.9)
    dense = l0prune.save_pretrained(model, tmp_path / "dense")
    compressed = l0prune.save_pretrained(model, tmp_path / "compressed", format="compressed")
    assert compressed.weight_bytes < 0.5 * dense.weight_bytes
    assert compressed.weight_bytes == (tmp_path / "compressed" / WEIGHTS_NAME).stat().st_size


def test_bad_calls_write_nothing(tmp_path):
    model = _pruned("llama", hidden=32, sparsity=0.5)
    with pytest.raises(ValueError, match="format must be one of dense, compressed, got 'zip'"):
        l0prune.save_pretrained(model, tmp_path / "a", format="zip")
    with pytest.raises(ValueError, match="Hugging Face model .* got Linear; .* l0prune.export"):
        l0prune.save_pretrained(nn.Linear(2, 2), tmp_path / "b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        l0prune.save_pretrained(model, tmp_path / "file", format="compressed")
    with pytest.raises(ValueError, match="holds no config.json"):
        l0prune.load_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
