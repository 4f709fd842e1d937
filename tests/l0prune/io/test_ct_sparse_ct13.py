"""l0prune's compressed-tensors folders against compressed-tensors 0.13 itself, run in its own
environment: its python is given by ``L0PRUNE_CT13_PYTHON`` (an environment with
``compressed-tensors==0.13.0``) and the tests are skipped without it."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import l0prune
from l0prune.model.masks import permanent_state_dict
from tests.l0prune import tiny_hf

pytest.importorskip("transformers")

CT13_PYTHON = os.environ.get("L0PRUNE_CT13_PYTHON")
SIDE = Path(__file__).with_name("ct13_side.py")
pytestmark = pytest.mark.skipif(
    CT13_PYTHON is None,
    reason="set L0PRUNE_CT13_PYTHON to an environment's python with compressed-tensors 0.13")

FORMATS = [({"sparsity": 0.6}, "sparse-bitmask"), ({"budget": "2:4"}, "sparse-24-bitmask")]


def _side(*args) -> None:
    done = subprocess.run([CT13_PYTHON, str(SIDE), *map(str, args)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def _pruned(budget):
    model = tiny_hf.model("llama", 64)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, tiny_hf.VOCAB, (1, 16), generator=g)}
            for _ in range(3)]
    l0prune.prune(model, data, method="obs", progress=False, **budget)
    return model


def test_that_environment_has_compressed_tensors_0_13():
    version = subprocess.run([CT13_PYTHON, "-c", "import compressed_tensors as c; "
                              "print(c.__version__)"], capture_output=True, text=True)
    assert version.stdout.strip() == "0.13.0"


@pytest.mark.parametrize("budget, format", FORMATS)
def test_model_compressor_decompresses_l0prunes_folder_bit_for_bit(tmp_path, budget, format):
    model = _pruned(budget)
    l0prune.save_pretrained(model, tmp_path / "ct", format="compressed-tensors")
    _side("decompress", tmp_path / "ct", tmp_path / "back.safetensors")
    with safe_open(str(tmp_path / "back.safetensors"), framework="pt") as file:
        assert file.metadata()["format"] == format
    back = load_file(str(tmp_path / "back.safetensors"))
    reference = permanent_state_dict(model)
    assert set(back) == set(reference)
    for name, tensor in reference.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name


@pytest.mark.parametrize("budget, format", FORMATS)
def test_l0prune_reads_and_writes_what_compressed_tensors_writes(tmp_path, budget, format):
    model = _pruned(budget)
    reference = permanent_state_dict(model)
    l0prune.save_pretrained(model, tmp_path / "dense")
    _side("compress", tmp_path / "dense", tmp_path / "ct13", format)
    back = l0prune.load_pretrained(tmp_path / "ct13")
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    # l0prune writes the same tensors, and the same config entries but the targets
    l0prune.save_pretrained(model, tmp_path / "ours", format="compressed-tensors")
    theirs = load_file(str(tmp_path / "ct13" / "model.safetensors"))
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    configs = [json.loads((tmp_path / d / "config.json").read_text())["quantization_config"]
               for d in ("ct13", "ours")]
    for config in configs:
        config["sparsity_config"].pop("targets")
        config["sparsity_config"].pop("ignore")
        config["sparsity_config"].pop("global_sparsity")  # llm-compressor fills it in
    assert configs[0] == configs[1]
