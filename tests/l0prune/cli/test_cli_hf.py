"""``l0prune prune --model hf:DIR`` on tiny random-init GPT-2, OPT, LLaMA and BERT folders with
text data: the report's perplexities are those of the ``model/`` folder it writes, reloaded by
``from_pretrained`` (dense) or ``l0prune.load_pretrained`` (compressed); bad input is one line
and writes nothing."""

import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import l0prune
from l0prune.data.batches import mean_loss
from l0prune.io.checkpoints import WEIGHTS_NAME
from tests.l0prune import tiny_hf
from tests.l0prune.cli.conftest import (
    assert_nothing_written,
    assert_one_line_error,
    run_cli,
    run_main,
)

pytest.importorskip("transformers")

WINDOWS = ("--nsamples", "4", "--seqlen", "32")


def _text(hf_folder):
    return ("--calibration", f"text:{hf_folder / 'train.txt'}",
            "--validation", f"text:{hf_folder / 'valid.txt'}")


def _validation_loss(model, folder, hf_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = l0prune.text_batches(tokenizer, (hf_folder / "valid.txt").read_text(),
                                   nsamples=4, seqlen=32, draw="consecutive")
    return mean_loss(model.eval(), windows, l0prune.next_token_nll, torch.device("cpu"))


def _check_model_folder(model, run, hf_folder, folder):
    assert _validation_loss(model, folder, hf_folder) == pytest.approx(
        run["pruned_loss"], rel=1e-6)
    state = model.state_dict()
    for layer in run["layers"]:
        assert int((state[f"{layer['name']}.weight"] != 0).sum()) == layer["kept"]


@pytest.mark.parametrize("kind, baseline", [("gpt2", "magnitude"), ("opt", "none"),
                                            ("llama", "none")])
def test_prunes_a_causal_lm_folder_on_text(hf_folder, tmp_path, capsys, monkeypatch, kind,
                                           baseline):
    from transformers import AutoModelForCausalLM

    done = run_main("prune", "--model", f"hf:{hf_folder / kind}", *_text(hf_folder),
                    "--sparsity", "0.5", "--method", "obs", "--baseline", baseline, *WINDOWS,
                    "--out", "run", "--quiet", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "run"
    data = json.loads((folder / "report.json").read_text())
    run = data["runs"][0]["report"]
    assert run["sparsity"] == pytest.approx(0.5, abs=1e-3) and run["perplexity"]
    assert run["finetune_steps"] == 0  # one-shot by default for hf: models
    assert run["dense_perplexity"] == pytest.approx(math.exp(run["dense_loss"]))
    assert run["perplexity_ratio"] == pytest.approx(
        math.exp(run["pruned_loss"] - run["dense_loss"]))
    text = (folder / "report.md").read_text()
    assert f"| perplexity | {run['dense_perplexity']:.4g} | {run['pruned_perplexity']:.4g}" in text
    assert f"| model/ | {data['files']['model/']:,} |" in text
    assert "(4 x 32 tokens)" in data["model"]
    model = AutoModelForCausalLM.from_pretrained(folder / "model")
    assert model.config.use_cache  # as loaded, not as pruned
    _check_model_folder(model, run, hf_folder, folder / "model")
    assert sorted(p.name for p in (folder / "model").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "recipe.toml",
        "tokenizer.json", "tokenizer_config.json"]
    assert (folder / "model" / "recipe.toml").read_text() == (folder / "recipe.toml").read_text()
    assert data["files"]["model/"] == sum(
        p.stat().st_size for p in (folder / "model").iterdir())
    # the model/ folder is the pruned model: no second copy of its weights next to it
    assert not (folder / "model.pt").exists() and not (folder / "model.sparse.pt").exists()
    assert "model.pt" not in data["files"] and "compact file" not in text


def test_compressed_two_four_folder(hf_folder, tmp_path, capsys, monkeypatch):
    done = run_main("prune", "--model", f"hf:{hf_folder / 'llama'}", *_text(hf_folder),
                    "--budget", "2:4", "--method", "wanda", "--baseline", "none",
                    "--save-format", "compressed", *WINDOWS, "--out", "run", "--quiet",
                    cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "run"
    run = json.loads((folder / "report.json").read_text())["runs"][0]["report"]
    config = json.loads((folder / "model" / "config.json").read_text())
    assert config["sparsity_config"]["sparsity_structure"] == "2:4"
    assert (folder / "model" / WEIGHTS_NAME).is_file()
    assert 'save-format = "compressed"' in (folder / "recipe.toml").read_text()
    _check_model_folder(l0prune.load_pretrained(folder / "model"), run, hf_folder,
                        folder / "model")


def test_rollback_dir_holds_the_block_copies_only_during_the_run(hf_folder, tmp_path, capsys,
                                                                 monkeypatch):
    args = ("prune", "--model", f"hf:{hf_folder / 'llama'}", *_text(hf_folder), "--budget",
            "2:4", "--method", "wanda", "--baseline", "none", *WINDOWS, "--quiet")
    missing = run_main(*args, "--rollback-dir", "nowhere", "--out", "bad", cwd=tmp_path,
                       capsys=capsys, monkeypatch=monkeypatch)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        "l0prune: error: --rollback-dir must be an existing folder, got nowhere"]
    assert not (tmp_path / "bad").exists()
    (tmp_path / "spill").mkdir()
    spilled = run_main(*args, "--rollback-dir", "spill", "--out", "run", cwd=tmp_path,
                       capsys=capsys, monkeypatch=monkeypatch)
    plain = run_main(*args, "--out", "plain", cwd=tmp_path, capsys=capsys,
                     monkeypatch=monkeypatch)
    assert spilled.returncode == 0 and plain.returncode == 0, spilled.stderr + plain.stderr
    assert list((tmp_path / "spill").iterdir()) == []
    first, second = (load_file(tmp_path / name / "model" / "model.safetensors")
                     for name in ("run", "plain"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_encoder_prunes_with_the_users_loss(hf_folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "enc.py").write_text(
        "def loss(outputs, batch):\n    return outputs.last_hidden_state.pow(2).mean()\n")
    done = run_main("prune", "--model", f"hf:{hf_folder / 'bert'}", *_text(hf_folder),
                    "--loss", "enc:loss", "--sparsity", "0.5", "--method", "wanda",
                    "--baseline", "none", *WINDOWS, "--out", "run", "--quiet", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    run = data["runs"][0]["report"]
    assert not run["perplexity"] and run["dense_perplexity"] is None
    assert data["model"].startswith(f"hf:{hf_folder / 'bert'}: BertModel")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tmp_path / "run" / "model")
    state = model.state_dict()
    for layer in run["layers"]:
        assert int((state[f"{layer['name']}.weight"] != 0).sum()) == layer["kept"]


@pytest.fixture
def no_tokenizer(tmp_path_factory):
    return tiny_hf.save("gpt2", tmp_path_factory.mktemp("bare") / "gpt2")


@pytest.fixture
def short_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("short") / "short.txt"
    path.write_text("def f():\n    pass\n")
    return path


@pytest.mark.parametrize("case, words", [
    ("short", ["--calibration text:", "short.txt", "fewer than one window of seqlen=32"]),
    ("no tokenizer", ["has no tokenizer", "tokenizer.save_pretrained"]),
    ("seqlen", ["--seqlen 100 is above the model's maximum length of 64 tokens"]),
    ("missing folder", ["model folder './nowhere/gpt2' does not exist"]),
    ("text without hf", ["--calibration text:", "needs --model hf:NAME_OR_DIR"]),
    ("nsamples without text", ["--nsamples applies to text data"]),
    ("compressed without hf", ["--save-format compressed applies to --model hf:"]),
    ("bad dataset", ["--validation must be hf-dataset:NAME[:CONFIG]:SPLIT"]),
])
def test_bad_hf_input(hf_folder, no_tokenizer, short_text, tmp_path, capsys, monkeypatch, case,
                      words):
    text = _text(hf_folder)
    model = ("--model", f"hf:{hf_folder / 'gpt2'}")
    args = {
        "short": [*model, "--calibration", f"text:{short_text}", *text[2:], *WINDOWS],
        "no tokenizer": ["--model", f"hf:{no_tokenizer}", *text, *WINDOWS],
        "seqlen": [*model, *text, "--seqlen", "100"],
        "missing folder": ["--model", "hf:./nowhere/gpt2", *text],
        "text without hf": ["--model", "mynet:build", *text],
        "nsamples without text": ["--model", "mynet:build", "--calibration", "mynet:data",
                                  "--validation", "mynet:data", "--nsamples", "8"],
        "compressed without hf": ["--save-format", "compressed"],
        "bad dataset": [*model, text[0], text[1], "--validation", "hf-dataset:wikitext"],
    }[case]
    done = run_main("prune", *args, "--sparsity", "0.5", "--out", "run", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, *words)
    assert_nothing_written(tmp_path)


def test_hub_name_without_network_is_one_line(hf_folder, tmp_path):
    """``HF_HUB_OFFLINE=1`` and an empty cache: the name cannot be found, and the message says
    how to give a folder instead."""
    hub = tmp_path / "hub-cache"
    hub.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hub)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        done = run_cli("prune", "--model", "hf:some-org/some-model", *_text(hf_folder),
                       "--sparsity", "0.5", "--out", "run", cwd=work)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    assert_one_line_error(done, "'some-org/some-model' is not a folder and not in the local "
                          "Hugging Face cache", "HF_HUB_OFFLINE", "hf:/path/to/folder")
    assert sorted(p.name for p in work.iterdir()) == []
    shutil.rmtree(hub)


def test_dataset_source_without_the_datasets_package(hf_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    done = run_main("prune", "--model", f"hf:{hf_folder / 'gpt2'}",
                    "--calibration", f"text:{hf_folder / 'train.txt'}",
                    "--validation", "hf-dataset:wikitext:wikitext-2-raw-v1:test", *WINDOWS,
                    "--sparsity", "0.5", "--out", "run", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(done, "--validation hf-dataset:wikitext:wikitext-2-raw-v1:test",
                          "needs the datasets package and a network", "text:PATH")
    assert_nothing_written(tmp_path)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("validation", [True, False])
def test_an_encoder_at_a_fixed_sparsity_needs_no_loss(hf_folder, tmp_path, capsys, monkeypatch,
                                                     validation):
    from transformers import AutoModel

    data = _text(hf_folder) if validation else _text(hf_folder)[:2]
    done = run_main("prune", "--model", f"hf:{hf_folder / 'bert'}", *data, "--sparsity", "0.5",
                    "--method", "wanda", "--baseline", "none", *WINDOWS, "--out", "run",
                    cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    unused = "l0prune: warning: --validation text:"
    assert (unused in done.stderr) == validation
    if validation:
        assert "is not used: BertModel has no loss of its own (give --loss" in done.stderr
    run = json.loads((tmp_path / "run" / "report.json").read_text())["runs"][0]["report"]
    assert run["dense_loss"] is None and run["pruned_loss"] is None
    assert run["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert "| validation loss | - | - |" in (tmp_path / "run" / "report.md").read_text()
    state = AutoModel.from_pretrained(tmp_path / "run" / "model").state_dict()
    for layer in run["layers"]:
        assert int((state[f"{layer['name']}.weight"] != 0).sum()) == layer["kept"]


@pytest.fixture(scope="module")
def masked_lm_folder(hf_folder, tmp_path_factory):
    """A tiny BERT with its masked-LM head, and a tokenizer with a mask token."""
    from transformers import AutoTokenizer, BertForMaskedLM

    folder = tmp_path_factory.mktemp("mlm") / "bert-mlm"
    tokenizer = AutoTokenizer.from_pretrained(hf_folder / "bert")
    tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    config = tiny_hf.config("bert")
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_an_encoder_with_a_masked_lm_head_is_judged_by_the_masked_lm_loss(
        hf_folder, masked_lm_folder, tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer, BertForMaskedLM

    from l0prune.data.batches import cross_entropy
    from l0prune.data.masked_lm import masked_lm_batches

    done = run_main("prune", "--model", f"hf:{masked_lm_folder}", *_text(hf_folder),
                    "--alpha", "1.05", "--method", "wanda", "--baseline", "none", *WINDOWS,
                    "--out", "run", "--quiet", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    run = data["runs"][0]["report"]
    assert "BertForMaskedLM" in data["model"] and "masked-LM loss" in data["model"]
    assert run["pruned_loss"] <= 1.05 * run["dense_loss"] and run["sparsity"] > 0
    model = BertForMaskedLM.from_pretrained(tmp_path / "run" / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(masked_lm_folder)
    windows = l0prune.text_batches(tokenizer, (hf_folder / "valid.txt").read_text(),
                                   nsamples=4, seqlen=32, draw="consecutive")
    masked = masked_lm_batches(windows, tokenizer.mask_token_id, seed=0,
                               special_ids=tokenizer.all_special_ids)
    assert mean_loss(model, masked, cross_entropy, torch.device("cpu")) == pytest.approx(
        run["pruned_loss"], rel=1e-5)


def test_an_encoder_without_a_loss_of_its_own_needs_one_for_alpha(hf_folder, tmp_path, capsys,
                                                                 monkeypatch):
    done = run_main("prune", "--model", f"hf:{hf_folder / 'bert'}", *_text(hf_folder),
                    "--alpha", "1.05", "--out", "run", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(done, "is a BertModel, neither a causal LM nor an encoder with a "
                          "masked-LM head: --alpha 1.05 needs --loss MODULE:NAME",
                          "sentence-embedding distance")
    assert_nothing_written(tmp_path)


def test_the_documented_encoder_loss_runs_with_alpha(hf_folder, tmp_path, capsys, monkeypatch):
    page = (ROOT / "docs" / "huggingface.md").read_text()
    code = page.split("#### A loss for an encoder", 1)[1].split("```python", 1)[1]
    code = code.split("```", 1)[0].replace("path/to/minilm", str(hf_folder / "bert"))
    (tmp_path / "embedding_loss.py").write_text(code)
    done = run_main("prune", "--model", f"hf:{hf_folder / 'bert'}", *_text(hf_folder),
                    "--loss", "embedding_loss:loss", "--alpha", "1.02", "--method", "wanda",
                    "--baseline", "none", *WINDOWS, "--out", "run", "--quiet", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    run = json.loads((tmp_path / "run" / "report.json").read_text())["runs"][0]["report"]
    assert run["dense_loss"] == pytest.approx(1.0, abs=1e-6)
    assert run["pruned_loss"] <= 1.02 * run["dense_loss"] and run["sparsity"] > 0


def test_a_folder_l0prune_wrote_compressed_is_pruned_again(hf_folder, tmp_path, capsys,
                                                          monkeypatch):
    first = ("prune", "--model", f"hf:{hf_folder / 'llama'}", *_text(hf_folder), "--sparsity",
             "0.3", "--method", "wanda", "--baseline", "none", *WINDOWS, "--quiet")
    for format in ("compressed", "compressed-tensors"):
        done = run_main(*first, "--save-format", format, "--out", format, cwd=tmp_path,
                        capsys=capsys, monkeypatch=monkeypatch)
        assert done.returncode == 0, done.stderr
        again = run_main("prune", "--model", f"hf:{tmp_path / format / 'model'}",
                         *_text(hf_folder), "--sparsity", "0.6", "--method", "wanda",
                         "--baseline", "none", *WINDOWS, "--out", f"{format}-again", "--quiet",
                         cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
        assert again.returncode == 0, again.stderr
        report = json.loads((tmp_path / f"{format}-again" / "report.json").read_text())
        assert report["runs"][0]["report"]["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_dtype_and_revision_reach_the_model(hf_folder, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    done = run_main("prune", "--model", f"hf:{hf_folder / 'llama'}", *_text(hf_folder),
                    "--sparsity", "0.5", "--method", "wanda", "--baseline", "none", *WINDOWS,
                    "--dtype", "bfloat16", "--out", "run", "--quiet", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model", dtype="auto")
    assert model.dtype == torch.bfloat16
    assert 'dtype = "bfloat16"' in (tmp_path / "run" / "recipe.toml").read_text()
    bad = run_main("prune", "--model", "mynet:build", "--calibration", "mynet:data",
                   "--sparsity", "0.5", "--revision", "v1", "--out", "x", cwd=tmp_path,
                   capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(bad, "--revision applies to --model hf:NAME_OR_DIR only")
