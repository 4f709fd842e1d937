"""``l0prune convert IN OUT --format F``: a model folder through every format and back, bit for
bit, with its tokenizer and recipe; bad input is one line and writes nothing."""

import json

import pytest
import torch

import l0prune
from l0prune.model.masks import permanent_state_dict
from tests.l0prune import tiny_hf
from tests.l0prune.cli.conftest import assert_one_line_error, run_main

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pruned(hf_folder, tmp_path_factory):
    """A pruned tiny LLaMA saved dense with its tokenizer and recipe, and its weights."""
    from transformers import AutoTokenizer

    model = tiny_hf.model("llama", 64)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, tiny_hf.VOCAB, (1, 16), generator=g)}]
    report = l0prune.prune(model, data, sparsity=0.6, method="magnitude", progress=False)
    folder = tmp_path_factory.mktemp("convert") / "dense"
    l0prune.save_pretrained(model, folder, recipe=report.config)
    AutoTokenizer.from_pretrained(hf_folder / "llama").save_pretrained(folder)
    return folder, permanent_state_dict(model)


def test_every_format_and_back_bit_for_bit(pruned, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    folder, reference = pruned
    carried = sorted(p.name for p in folder.iterdir()
                     if p.name not in ("config.json", "generation_config.json",
                                       "model.safetensors"))
    assert {"recipe.toml", "tokenizer.json"} <= set(carried)
    previous = folder
    for format in ("compressed-tensors", "compressed", "dense"):
        done = run_main("convert", previous, format, "--format", format, cwd=tmp_path,
                        capsys=capsys, monkeypatch=monkeypatch)
        assert done.returncode == 0, done.stderr
        assert done.stderr.startswith(f"wrote {format}/ ({format}): ")
        out = tmp_path / format
        assert set(carried) <= {p.name for p in out.iterdir()}
        assert (out / "recipe.toml").read_text() == (folder / "recipe.toml").read_text()
        back = l0prune.load_pretrained(out)
        for name, tensor in back.state_dict().items():
            assert torch.equal(tensor, reference[name]), (format, name)
        previous = out
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")  # no l0prune needed
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    config = json.loads((tmp_path / "compressed-tensors" / "config.json").read_text())
    assert config["quantization_config"]["sparsity_config"]["format"] == "sparse-bitmask"


def test_bfloat16_stays_bfloat16(pruned, tmp_path, capsys, monkeypatch):
    folder, reference = pruned
    model = l0prune.load_pretrained(folder, dtype=torch.bfloat16)
    l0prune.save_pretrained(model, tmp_path / "bf16")
    done = run_main("convert", "bf16", "ct", "--format", "compressed-tensors", "--json",
                    cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["format"] == "compressed-tensors" and summary["out"] == "ct"
    back = l0prune.load_pretrained(tmp_path / "ct")
    assert back.dtype == torch.bfloat16
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, reference[name].to(torch.bfloat16)), name


@pytest.mark.parametrize("case, words", [
    ("out exists", ["OUT taken: exists and is not an empty folder"]),
    ("no folder", ["IN nowhere: no such folder"]),
    ("same", ["OUT", "is IN"]),
    ("missing tensor", ["its weights lack 'model.layers.2.self_attn.q_proj.weight'"]),
    ("format", ["argument --format: invalid choice: 'zip'"]),
])
def test_bad_input_is_one_line_and_writes_nothing(pruned, tmp_path, capsys, monkeypatch, case,
                                                  words):
    folder = pruned[0]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    short = tmp_path / "short"
    short.mkdir()
    for path in folder.iterdir():
        (short / path.name).write_bytes(path.read_bytes())
    config = json.loads((short / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (short / "config.json").write_text(json.dumps(config))
    source, out, format = {
        "out exists": (folder, "taken", "dense"),
        "no folder": ("nowhere", "new", "dense"),
        "same": (short, short, "dense"),
        "missing tensor": (short, "new", "dense"),
        "format": (folder, "new", "zip"),
    }[case]
    done = run_main("convert", source, out, "--format", format, cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(done, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short", "taken"]
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
