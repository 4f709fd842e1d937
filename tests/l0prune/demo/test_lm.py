"""The built-in LM: its corpus, tokenizer, training, cache and perplexities."""

import hashlib
import json
import math

import pytest
import torch

from l0prune.demo import lm

pytest.importorskip("transformers")


def _write_tree(root, order):
    files = {
        "b.py": '"""Module b."""\n\ndef g():\n    """Does g."""\n',
        "a.py": '"""Module a."""\n\nclass A:\n    """Class A.\n\n    Two lines."""\n',
        "pkg/c.py": 'def h():\n    """Does h."""\n\nasync def k():\n    """Does k."""\n',
        "pkg/none.py": "x = 1\n",
        "test/t.py": '"""A test, left out."""\n',
        "site-packages/s.py": '"""Installed, left out."""\n',
        "broken.py": '"""Not Python 3."""\nprint "x"\n',
    }
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[name])
    (root / "latin1.py").write_bytes('"""caf\xe9"""\n'.encode("latin-1"))


def test_corpus_is_deterministic_whatever_the_file_order(tmp_path):
    names = ["b.py", "a.py", "pkg/c.py", "pkg/none.py", "test/t.py", "site-packages/s.py",
             "broken.py"]
    _write_tree(tmp_path / "one", names)
    _write_tree(tmp_path / "two", names[::-1])
    first, second = lm.stdlib_corpus(tmp_path / "one"), lm.stdlib_corpus(tmp_path / "two")
    assert first == second and first.digest() == second.digest()
    # sorted paths, each file's docstrings in source order; tests, site-packages, files that
    # do not parse or are not UTF-8 left out; the split follows the hash of the path
    expected = {False: [], True: []}
    for relative, docs in (("a.py", ["Module a.", "Class A.\n\nTwo lines."]),
                           ("b.py", ["Module b.", "Does g."]),
                           ("pkg/c.py", ["Does h.", "Does k."])):
        held = int(hashlib.sha256(relative.encode()).hexdigest(), 16) % 10 == 0
        expected[held] += docs
    assert list(first.train_docs) == expected[False]
    assert list(first.heldout_docs) == expected[True]
    assert first.train == "\n\n".join(expected[False])
    assert first.train_files + first.heldout_files == 3


def test_docstrings_in_source_order():
    source = 'def f():\n    """F."""\n    def inner():\n        """Inner."""\n\n' \
             'class C:\n    """C."""\n'
    assert lm.docstrings('"""Top."""\n' + source) == ["Top.", "F.", "Inner.", "C."]


def test_stdlib_corpus_splits_whole_files():
    corpus = lm.stdlib_corpus()
    assert corpus.train_files > 5 * corpus.heldout_files > 0
    assert len(corpus.train) > 500_000 and len(corpus.heldout) > 20_000
    assert lm.stdlib_corpus() == corpus


def test_tokenizer_is_deterministic_and_lossless():
    text = "\n\n".join(["Return the sum of the values.", "Parse the string s.",
                        "Raise ValueError if x < 0: café ∑"] * 30)
    one, two = lm.build_tokenizer(text, 300), lm.build_tokenizer(text, 300)
    assert one.backend_tokenizer.to_str() == two.backend_tokenizer.to_str()
    assert len(one) == 300 and one.convert_ids_to_tokens(0) == lm.END_OF_TEXT
    sample = "Unseen text: naïve Σx ≥ 0\n\tdone"
    assert one.decode(one(sample)["input_ids"]) == sample
    with pytest.raises(ValueError, match="vocab_size must be at least 257"):
        lm.build_tokenizer(text, 200)


def test_training_is_deterministic():
    config = lm.LMConfig(vocab_size=300, hidden=16, blocks=1, heads=2, intermediate=32,
                         seqlen=8, batch_size=2, steps=3, warmup=1)
    ids = torch.randint(0, 300, (200,), generator=torch.Generator().manual_seed(0))
    (a, losses_a), (b, losses_b) = lm.train_lm(config, ids, 300), lm.train_lm(config, ids, 300)
    assert losses_a == losses_b
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="not more than one window"):
        lm.train_lm(config, ids[:8], 300)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    config = lm.LMConfig(steps=100, warmup=10, lr=1.0)
    rates = [lm._learning_rate(config, step) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] == pytest.approx(0.1, abs=1e-3)


def test_unigram_perplexity_closed_form():
    train, heldout = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2])
    p = torch.tensor([4.0, 2.0, 1.0]) / 7.0   # (count + 1) / (N + V)
    expected = math.exp(-float(p.log().mean()))
    assert lm.unigram_perplexity(train, heldout, 3) == pytest.approx(expected)


def test_perplexity_of_uniform_predictions_is_the_vocabulary():
    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            return (torch.zeros(*input_ids.shape, 7) + self.w,)

    batches = [{"input_ids": torch.randint(0, 7, (2, 5))}]
    assert lm.perplexity(Uniform(), batches) == pytest.approx(7.0)


def test_tiny_lm_trains_once_and_is_cached(tiny_lm, monkeypatch):
    monkeypatch.setenv("L0PRUNE_CACHE", str(tiny_lm.folder.parent))
    info = tiny_lm.info
    assert info["config"] == json.loads(json.dumps(lm.asdict(lm.SIZES["tiny"])))
    assert math.isfinite(info["heldout_perplexity"])
    assert info["heldout_perplexity"] < info["unigram_perplexity"]
    assert info["final_train_loss"] < math.log(info["config"]["vocab_size"])
    # the cached folder is what a second call loads: no training, the same weights
    monkeypatch.setattr(lm, "train_lm", lambda *a, **k: pytest.fail("trained again"))
    again = lm.builtin_lm("tiny", log=lambda m: pytest.fail(f"logged {m!r}"))
    assert again.folder == tiny_lm.folder
    for (name, x), (_, y) in zip(tiny_lm.model.state_dict().items(),
                                 again.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert again.model.config.use_cache is False
    # the held-out perplexity recorded is the model's
    heldout = again.batches("heldout", lm.HELDOUT_WINDOWS, batch_size=16)
    assert lm.perplexity(again.model, heldout) == pytest.approx(info["heldout_perplexity"],
                                                                rel=1e-5)


def test_tiny_lm_folder_loads_as_a_hugging_face_model(tiny_lm):
    from l0prune.io import hf

    model = hf.load_model(str(tiny_lm.model_dir))
    tokenizer = hf.load_tokenizer(str(tiny_lm.model_dir))
    assert type(model).__name__ == "LlamaForCausalLM" and hf.is_causal_lm(model.config)
    text = tiny_lm.heldout_text[:200]
    assert tokenizer(text)["input_ids"] == tiny_lm.tokenizer(text)["input_ids"]


def test_batches_follow_the_split(tiny_lm):
    train = tiny_lm.batches("train", 4, seed=1)
    assert len(train) == 4 and train[0]["input_ids"].shape == (1, lm.SIZES["tiny"].seqlen)
    again = tiny_lm.batches("train", 4, seed=1)
    assert all(a["input_ids"].equal(b["input_ids"]) for a, b in zip(train, again, strict=True))
    ids = tiny_lm.tokenizer(tiny_lm.heldout_text)["input_ids"]
    first = tiny_lm.batches("heldout", 2, batch_size=2)[0]["input_ids"]
    assert first.flatten().tolist() == ids[:2 * lm.SIZES["tiny"].seqlen]
    with pytest.raises(ValueError, match="split must be 'train' or 'heldout'"):
        tiny_lm.batches("test", 1)


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match=r"size must be one of \['default', 'tiny'\]"):
        lm.builtin_lm("huge")
