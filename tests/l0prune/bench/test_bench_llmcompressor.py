"""The side-by-side against llm-compressor, on a tiny random BERT.

The llm-compressor run itself needs an environment with llm-compressor; its python is given by
``L0PRUNE_LLMCOMPRESSOR_PYTHON`` and the test is skipped without it.
"""

import os

import pytest
import torch

from l0prune.bench import llmcompressor_side as side
from l0prune.cli import main as l0prune_main

pytest.importorskip("transformers")

LLMCOMPRESSOR_PYTHON = os.environ.get("L0PRUNE_LLMCOMPRESSOR_PYTHON")


@pytest.fixture(scope="module")
def encoder(hf_folder):
    """The tiny BERT folder, its texts tokenised (calibration and held-out padded batches) and the
    dense model's held-out embeddings."""
    from transformers import AutoTokenizer

    folder = hf_folder / "bert"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = (hf_folder / "train.txt").read_text().split("\n\n")
    encode = {"truncation": True, "max_length": 24}
    calibration = side._batches(tokenizer([t for t in text if t.strip()][:12], **encode),
                                batch_size=4)
    lines = [line for line in (hf_folder / "valid.txt").read_text().splitlines() if line.strip()]
    heldout = side._batches(tokenizer(lines[:10], **encode), batch_size=4)
    dense = side.embeddings(side._load(folder), heldout)
    return folder, calibration, heldout, dense


def test_batches_are_a_tokenizers_in_the_texts_order_padded_and_masked():
    batches = side._batches({"input_ids": [[5, 6, 7], [8], [1, 2, 3, 4], [9, 9]]},
                            batch_size=2)
    assert [b["input_ids"].tolist() for b in batches] == [[[5, 6, 7], [8, 0, 0]],
                                                         [[1, 2, 3, 4], [9, 9, 0, 0]]]
    assert batches[1]["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_dense_model_against_itself(encoder):
    folder, _, heldout, dense = encoder
    zeros, mean, low = side._quality(side._load(folder), heldout, dense)
    assert zeros == 0.0 and mean == pytest.approx(1.0, abs=1e-5) and low == pytest.approx(1.0,
                                                                                        abs=1e-5)


def test_l0prune_row(encoder):
    folder, calibration, heldout, dense = encoder
    rows = [side.run_l0prune(folder, "obs", calibration, heldout, dense, 0.5,
                             sequential=sequential, blockwise=blockwise)[0]
            for sequential, blockwise in ((True, True), (False, True), (True, False))]
    assert [r.setting for r in rows] == ["block by block, sequential",
                                         "block by block, not sequential",
                                         "whole model, sequential"]
    for row in rows:
        assert (row.tool, row.method) == ("l0prune", "obs")
        assert row.sparsity == 0.5  # every block linear at exactly half (even widths)
        assert 0.0 < row.cosine_min <= row.cosine_mean < 1.0
    # block by block gives the whole-model path's result (up to float rounding)
    assert rows[0].cosine_mean == pytest.approx(rows[2].cosine_mean, abs=1e-4)


def test_llmcompressor_row_is_skipped_without_its_python(encoder, tmp_path):
    folder, calibration, heldout, dense = encoder
    row = side.run_llmcompressor(None, folder, calibration, heldout, dense, 0.5, 1, tmp_path)
    assert row.seconds is None and row.note.startswith("skipped: no --llmcompressor-python")
    assert "| llm-compressor | sparsegpt | sequential pipeline, batch 1 | - | - | - | - | - | - " \
           "| skipped" in side.table([row], "x")


def test_table_gives_the_time_against_llmcompressor():
    rows = [side.Row("llm-compressor", "sparsegpt", "p", 40.0, 20.0, 0.5, 0.92, 0.8),
            side.Row("l0prune", "obs", "b", 10.0, 9.5, 0.5, 0.95, 0.85)]
    lines = side.table(rows, "x").splitlines()
    assert lines[-2].startswith("| llm-compressor | sparsegpt | p | 40.0 | 20.0 | 1.00 | 50.0 % |")
    assert lines[-1].startswith("| l0prune | obs | b | 10.0 | 9.5 | 0.47 | 50.0 % | 0.9500 |")


def test_bench_without_llmcompressor_writes_the_l0prune_rows(encoder, tmp_path):
    folder = encoder[0]
    out = tmp_path / "side.md"
    assert l0prune_main(["bench", "llmcompressor", "--encoder", str(folder), "--texts", "8",
                         "--heldout-texts", "4", "--max-tokens", "16", "--methods", "wanda",
                         "--sequential", "no", "--workers", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert f"Encoder: the encoder in {folder}" in text and "torch threads: 1" in text
    assert "| llm-compressor | sparsegpt | sequential pipeline, batch 1 | - |" in text
    assert "skipped" in text
    assert "| l0prune | wanda | block by block, not sequential |" in text
    assert "| l0prune | wanda | block by block, not sequential, dask workers: 1 |" in text
    assert "weights equal in-process bit for bit |" in text
    assert "| 50.0 % |" in text and "sequential |" in text


@pytest.mark.skipif(LLMCOMPRESSOR_PYTHON is None,
                    reason="set L0PRUNE_LLMCOMPRESSOR_PYTHON to an environment's python that "
                           "has llm-compressor")
def test_llmcompressor_script_prunes_the_same_layers(encoder, tmp_path):
    folder, calibration, heldout, dense = encoder
    row = side.run_llmcompressor(LLMCOMPRESSOR_PYTHON, folder, calibration, heldout, dense,
                                 0.5, 1, tmp_path)
    assert row.sparsity == pytest.approx(0.5, abs=1e-3)
    assert 0.0 < row.cosine_min <= row.cosine_mean < 1.0
    assert row.note.startswith("llm-compressor ")
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "llmcompressor" / "model.safetensors"))
    original = side._load(folder).state_dict()
    for name, value in state.items():
        changed = not torch.equal(value, original[name])
        assert changed == (name.startswith("encoder.layer.") and name.endswith(".weight")
                           and value.dim() == 2), name
