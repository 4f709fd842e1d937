"""Shared fixtures: digits models trained for a few seconds, a tiny random BERT, and the
built-in LM's tiny size."""

import copy
import os

import pytest
import torch

from l0prune.demo.digits import trained_model


@pytest.fixture(scope="session")
def digits_mlp_trained():
    """The digits MLP trained 10 epochs, and its data (never changed by a test)."""
    return trained_model("mlp", epochs=10)


@pytest.fixture(scope="session")
def digits_cnn_trained():
    """The digits CNN trained 5 epochs, and its data (never changed by a test)."""
    return trained_model("cnn", epochs=5)


@pytest.fixture
def mlp(digits_mlp_trained):
    """A fresh copy of the trained MLP and the data."""
    model, data = digits_mlp_trained
    return copy.deepcopy(model), data


@pytest.fixture
def cnn(digits_cnn_trained):
    """A fresh copy of the trained CNN and the data."""
    model, data = digits_cnn_trained
    return copy.deepcopy(model), data


@pytest.fixture
def bert():
    """A randomly initialised 2-layer BERT with hidden size 32 (nothing downloaded)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32,
    )
    return transformers.BertModel(config).eval()


@pytest.fixture
def tokens():
    """Random token batches whose sequences end in padding (``attention_mask`` zeros)."""
    g = torch.Generator().manual_seed(0)
    batch, length = 4, 12
    batches = []
    for _ in range(3):
        ids = torch.randint(1, 97, (batch, length), generator=g)
        lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask})
    return batches


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """``train.txt``, ``valid.txt`` and tiny GPT-2, OPT, LLaMA and BERT folders (hidden 32, two
    layers, random init) saved with a tokenizer trained here: nothing is downloaded."""
    pytest.importorskip("transformers")
    from . import tiny_hf

    root = tmp_path_factory.mktemp("hf")
    train, valid = tiny_hf.corpus()
    (root / "train.txt").write_text(train)
    (root / "valid.txt").write_text(valid)
    tok = tiny_hf.tokenizer(train)
    for kind in tiny_hf.KINDS:
        tiny_hf.save(kind, root / kind, tok)
    return root


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """The built-in LM's ``"tiny"`` size, trained once into a cache folder of its own
    (``tiny_lm.folder.parent``; set ``L0PRUNE_CACHE`` to it to find it again)."""
    pytest.importorskip("transformers")
    from l0prune.demo.lm import builtin_lm

    cache = tmp_path_factory.mktemp("l0prune-cache")
    before = os.environ.get("L0PRUNE_CACHE")
    os.environ["L0PRUNE_CACHE"] = str(cache)
    try:
        return builtin_lm("tiny", log=lambda message: None)
    finally:
        if before is None:
            del os.environ["L0PRUNE_CACHE"]
        else:
            os.environ["L0PRUNE_CACHE"] = before
