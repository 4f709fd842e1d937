"""Text into windows of tokens: drawn from the text, seeded, of the asked size; sources read."""

import pytest
import torch

from l0prune.data import text as text_module
from l0prune.data.text import read_source, read_text, text_batches


class Characters:
    """A tokenizer with one token per character (code point)."""

    def __call__(self, text, **kwargs):
        return {"input_ids": [ord(c) for c in text]}


TEXT = "".join(chr(97 + i % 26) + chr(65 + i % 7) for i in range(500))  # 1000 characters
IDS = torch.tensor([ord(c) for c in TEXT])


def _starts(window):
    """Every position where ``window`` occurs in ``IDS``."""
    n = window.numel()
    return [i for i in range(IDS.numel() - n + 1) if torch.equal(IDS[i:i + n], window)]


def test_random_windows_are_pieces_of_the_text_drawn_by_the_seed():
    batches = text_batches(Characters(), TEXT, nsamples=9, seqlen=40, seed=3)
    assert len(batches) == 9
    for batch in batches:
        assert batch["input_ids"].shape == (1, 40) and batch["input_ids"].dtype == torch.int64
        assert _starts(batch["input_ids"][0])
    again = text_batches(Characters(), TEXT, nsamples=9, seqlen=40, seed=3)
    other = text_batches(Characters(), TEXT, nsamples=9, seqlen=40, seed=4)
    def same(a, b):
        return all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b, strict=True))

    assert same(batches, again) and not same(batches, other)
    g = torch.Generator().manual_seed(3)
    expected = torch.randint(0, 1000 - 40 + 1, (9,), generator=g)
    assert [b["input_ids"][0, 0].item() for b in batches] == IDS[expected].tolist()


def test_consecutive_windows_tile_the_text_from_the_start():
    batches = text_batches(Characters(), TEXT, nsamples=100, seqlen=300, draw="consecutive",
                           batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 300), (1, 300)]
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]).reshape(-1), IDS[:900])


@pytest.mark.parametrize("draw", ["random", "consecutive"])
def test_windows_carry_their_attention_mask(draw):
    batches = text_batches(Characters(), TEXT, nsamples=3, seqlen=50, draw=draw, batch_size=2)
    for batch in batches:
        assert sorted(batch) == ["attention_mask", "input_ids"]
        assert torch.equal(batch["attention_mask"], torch.ones_like(batch["input_ids"]))


def test_a_window_may_be_the_whole_text_but_not_longer():
    assert text_batches(Characters(), TEXT, nsamples=2, seqlen=1000)[0]["input_ids"].shape == (
        1, 1000)
    with pytest.raises(ValueError, match="has 1,000 tokens, fewer than one window of seqlen=1001"):
        text_batches(Characters(), TEXT, seqlen=1001)


@pytest.mark.parametrize("kwargs, words", [
    ({"nsamples": 0}, "nsamples must be an integer >= 1, got 0"),
    ({"seqlen": 1}, "seqlen must be an integer >= 2, got 1"),
    ({"draw": "all"}, "draw must be 'random' or 'consecutive', got 'all'"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        text_batches(Characters(), TEXT, **kwargs)


def test_real_tokenizer_windows(hf_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_folder / "gpt2")
    text = (hf_folder / "valid.txt").read_text()
    ids = tokenizer(text)["input_ids"]
    batches = text_batches(tokenizer, text, nsamples=4, seqlen=32, draw="consecutive")
    assert torch.cat([b["input_ids"] for b in batches]).reshape(-1).tolist() == ids[:128]


def test_read_text_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "c.md").write_text("not text")
    assert read_text(tmp_path) == "first\n\nsecond"
    assert read_text(tmp_path / "a.txt") == "first"
    assert read_source(f"text:{tmp_path}") == "first\n\nsecond"
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("  \n")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    for path, words in ((tmp_path / "empty", "holds no .txt file"),
                        (tmp_path / "none", "no such file or folder"),
                        (tmp_path / "blank.txt", "is empty"),
                        (tmp_path / "latin.txt", "is not UTF-8")):
        with pytest.raises(ValueError, match=words):
            read_text(path)


@pytest.mark.parametrize("source, expected", [
    ("hf-dataset:wikitext:wikitext-2-raw-v1:test", ("wikitext", "wikitext-2-raw-v1", "test")),
    ("hf-dataset:org/data:train", ("org/data", None, "train")),
    ("hf-dataset:c4:en:train[:1000]", ("c4", "en", "train[:1000]")),
    ("hf-dataset:ptb:train[10%:20%]", ("ptb", None, "train[10%:20%]")),
])
def test_dataset_sources_parse(monkeypatch, source, expected):
    monkeypatch.setattr(text_module, "dataset_text", lambda *args: args)
    assert read_source(source) == expected


def test_dataset_without_the_datasets_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(ValueError, match="needs the datasets package and a network"):
        read_source("hf-dataset:wikitext:wikitext-2-raw-v1:test")


@pytest.mark.parametrize("source", ["file.txt", "text:", "hf-dataset:onlyname"])
def test_other_sources_are_refused(source):
    with pytest.raises(ValueError, match="text:PATH or hf-dataset:NAME"):
        read_source(source)


def _metaspace_tokenizer(text):
    """A SentencePiece-style tokenizer (``▁`` for a space, BPE) adding ``<s>`` and ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe)


@pytest.mark.parametrize("kind", ["byte-level", "metaspace"])
def test_pieces_give_the_tokens_of_the_whole_text(hf_folder, monkeypatch, kind):
    from transformers import AutoTokenizer

    text = (hf_folder / "valid.txt").read_text()
    tokenizer = (AutoTokenizer.from_pretrained(hf_folder / "gpt2") if kind == "byte-level"
                 else _metaspace_tokenizer((hf_folder / "train.txt").read_text()))
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"])
    monkeypatch.setattr(text_module, "PIECE", 50)  # hundreds of cuts
    consecutive = text_batches(tokenizer, text, nsamples=10 ** 6, seqlen=100, draw="consecutive")
    assert torch.equal(torch.cat([b["input_ids"] for b in consecutive]).reshape(-1),
                       ids[:ids.numel() // 100 * 100])
    drawn = text_batches(tokenizer, text, nsamples=20, seqlen=100, seed=7)
    starts = torch.randint(0, ids.numel() - 100 + 1, (20,),
                           generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(b["input_ids"][0], ids[s:s + 100])
               for b, s in zip(drawn, starts.tolist(), strict=True))


class Spy(Characters):
    """Characters with its special tokens (1 first, 2 last) that records what it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, text, add_special_tokens=True, **kwargs):
        self.calls.append(len(text))
        ids = super().__call__(text)["input_ids"]
        return {"input_ids": [1, *ids, 2] if add_special_tokens else ids}


def test_the_tokenizer_sees_pieces_not_the_whole_corpus(monkeypatch):
    monkeypatch.setattr(text_module, "PIECE", 1000)
    words = " ".join(f"w{i % 97}" for i in range(20000))  # 117,890 characters
    spy = Spy()
    batches = text_batches(spy, words, nsamples=4, seqlen=64, seed=0)
    assert max(spy.calls) <= 1000 + 4 and sum(spy.calls) < len(words) + 2000
    ids = torch.tensor([1, *(ord(c) for c in words), 2])
    starts = torch.randint(0, ids.numel() - 64 + 1, (4,),
                           generator=torch.Generator().manual_seed(0))
    assert [b["input_ids"][0].tolist() for b in batches] == [
        ids[s:s + 64].tolist() for s in starts.tolist()]
    spy.calls.clear()
    first = text_batches(spy, words, nsamples=2, seqlen=500, draw="consecutive")
    assert sum(spy.calls) < 4000  # the two windows' pieces (and the first one's twice), no more
    assert torch.equal(torch.cat([b["input_ids"] for b in first]).reshape(-1), ids[:1000])
