"""A built-in causal language model, trained by l0prune itself on text that ships with Python.

Nothing is downloaded: the text is the docstrings of Python's standard library, the tokenizer is
learned from it, and the model is a ``transformers`` ``LlamaForCausalLM`` that starts from a
seeded random init, so every ``hf:`` code path (``finalize``, ``save_pretrained``, checkpoints,
block mode) applies to it.

- **Corpus** (:func:`stdlib_corpus`): every module, class and function docstring of the
  standard library's ``.py`` sources (test suites, ``idlelib``, ``lib2to3``, ``turtledemo`` and
  ``site-packages`` left out), files in sorted path order, each file's docstrings in source
  order, joined by blank lines. A whole file is held out when the SHA-256 of its relative path is
  0 mod 10 (about a tenth of the files), so no held-out text is seen in training.
- **Tokenizer** (:func:`build_tokenizer`): byte-level BPE learned from the training split with
  the ``tokenizers`` package (every byte is a token, so any text encodes).
- **Model** (:data:`SIZES`): ``"default"`` is hidden 192, 4 blocks of 3 heads, SwiGLU MLP 512,
  vocabulary 2048, tied embeddings (2.2M parameters), trained 1200 steps of 8 windows of 128
  tokens (about 2.6 epochs) with AdamW, a linear warm-up and a cosine decay, at one torch
  thread: about 5 minutes of one core. ``"tiny"`` trains in seconds, for tests.
- **Determinism**: one thread and fixed seeds, so the same Python (the same corpus), torch and
  CPU kind give the same weights bit for bit.
- **Cache**: ``cache_dir()/lm-SIZE-KEY/`` (``~/.cache/l0prune`` by default, see
  :mod:`l0prune.demo.cache`) holds ``model/`` (``save_pretrained`` with the tokenizer, so
  ``l0prune prune --model hf:FOLDER/model`` works), ``train.txt``, ``heldout.txt`` and
  ``info.json`` (held-out perplexity, a unigram model's, training seconds, versions).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from l0prune.data.batches import mean_loss
from l0prune.data.perplexity import next_token_nll
from l0prune.data.text import text_batches

from .cache import cache_dir, publish_folder

__all__ = [
    "SIZES",
    "BuiltinLM",
    "Corpus",
    "LMConfig",
    "build_tokenizer",
    "builtin_lm",
    "docstrings",
    "perplexity",
    "stdlib_corpus",
    "train_lm",
    "unigram_perplexity",
]

#: Parts of the standard library's tree left out of the corpus.
SKIPPED = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
                     "turtledemo"})
#: One file in this many (by the hash of its path) is held out.
HELDOUT_EVERY = 10
#: The one special token, separating nothing but available as BOS / EOS / padding.
END_OF_TEXT = "<|endoftext|>"
#: Held-out windows (at most; the default size's held-out text holds about 450) in ``info.json``.
HELDOUT_WINDOWS = 512
_FORMAT = 1  # bumped when the cache entry's layout or the training recipe changes


@dataclass(frozen=True)
class LMConfig:
    """The built-in LM's architecture and training recipe.

    Attributes:
        vocab_size: BPE vocabulary, at least 257 (256 bytes and the special token).
        hidden: model width.
        blocks: transformer blocks.
        heads: attention heads (``hidden`` must divide by it).
        intermediate: SwiGLU MLP width.
        seqlen: tokens per training window (the model takes up to twice as many).
        batch_size: windows per step.
        steps: optimizer steps.
        lr: peak learning rate (AdamW, betas 0.9 / 0.95, weight decay 0.1).
        warmup: steps of linear warm-up before the cosine decay to ``lr / 10``.
        seed: seeds the init and the windows drawn.
    """

    vocab_size: int = 2048
    hidden: int = 192
    blocks: int = 4
    heads: int = 3
    intermediate: int = 512
    seqlen: int = 128
    batch_size: int = 8
    steps: int = 1200
    lr: float = 3e-3
    warmup: int = 50
    seed: int = 0


#: Named sizes: ``"default"`` for the benchmark, ``"tiny"`` for tests (trains in seconds).
SIZES = {
    "default": LMConfig(),
    "tiny": LMConfig(vocab_size=384, hidden=32, blocks=2, heads=2, intermediate=64, seqlen=32,
                     batch_size=8, steps=200, lr=1e-2, warmup=5),
}


@dataclass(frozen=True)
class Corpus:
    """The training and held-out docstrings, and how many source files each came from."""

    train_docs: tuple[str, ...]
    heldout_docs: tuple[str, ...]
    train_files: int
    heldout_files: int

    @property
    def train(self) -> str:
        """The training text: the docstrings joined by blank lines."""
        return "\n\n".join(self.train_docs)

    @property
    def heldout(self) -> str:
        """The held-out text, joined the same way."""
        return "\n\n".join(self.heldout_docs)

    def digest(self) -> str:
        """SHA-256 of both texts: equal digests, equal corpora."""
        return hashlib.sha256(f"{self.train}\0{self.heldout}".encode()).hexdigest()


def docstrings(source: str) -> list[str]:
    """The module, class and function docstrings of Python source, in source order, cleaned
    (``inspect.cleandoc``).

    Args:
        source: Python source text.

    Returns:
        The docstrings (empty ones left out).

    Raises:
        SyntaxError: when ``source`` does not parse.

    Example:
        >>> docstrings("'Module.'\\ndef f():\\n    'Does f.'\\n")
        ['Module.', 'Does f.']
    """
    found = []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, kinds):
            text = ast.get_docstring(node, clean=True)
            if text and text.strip():
                found.append((getattr(node, "lineno", 0), text.strip()))
    return [text for _, text in sorted(found, key=lambda item: item[0])]


def _held_out(relative: str) -> bool:
    return int(hashlib.sha256(relative.encode()).hexdigest(), 16) % HELDOUT_EVERY == 0


def stdlib_corpus(root: str | Path | None = None) -> Corpus:
    """The docstrings of the standard library, split into training and held-out text.

    Args:
        root: the library's folder; default: this Python's (``sysconfig``'s ``stdlib`` path).

    Returns:
        The :class:`Corpus` (see the module docstring for the rules); the same tree gives the
        same corpus, whatever the order its files were created or are listed in.

    Example:
        >>> corpus = stdlib_corpus()  # doctest: +SKIP
        >>> corpus.train_files > corpus.heldout_files > 0  # doctest: +SKIP
        True
    """
    import sysconfig

    return _corpus(Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"]))


@functools.lru_cache(maxsize=2)
def _corpus(root: Path) -> Corpus:
    """:func:`stdlib_corpus` of a folder, kept for the process (a :class:`Corpus` is
    immutable; gathering the real one parses about 11 MB of source)."""
    files = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if not SKIPPED.intersection(relative.parts[:-1]) and path.is_file():
            files.append((relative.as_posix(), path))
    parts: dict[bool, list[str]] = {False: [], True: []}
    counts = {False: 0, True: 0}
    for relative, path in sorted(files):
        try:
            found = docstrings(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue  # not UTF-8, or Python this interpreter does not parse
        if found:
            held = _held_out(relative)
            parts[held].extend(found)
            counts[held] += 1
    return Corpus(tuple(parts[False]), tuple(parts[True]), counts[False], counts[True])


def build_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer learned from ``text``, as a ``transformers`` fast tokenizer.

    Byte-level BPE (GPT-2's scheme): text is split into words on whitespace and punctuation,
    each word's UTF-8 bytes are the initial tokens, and the most frequent adjacent pair is merged
    into a new token until the vocabulary holds ``vocab_size`` tokens (ties broken by the pair's
    token ids, so the result does not depend on hash order). ``<|endoftext|>`` is token 0.

    Args:
        text: the training text.
        vocab_size: tokens wanted, at least 257.

    Returns:
        A ``PreTrainedTokenizerFast`` (``save_pretrained`` writes ``tokenizer.json``).

    Example:
        >>> tokenizer = build_tokenizer("the cat sat on the mat " * 20, 270)
        >>> tokenizer.decode(tokenizer("the cat")["input_ids"])
        'the cat'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + 1), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(text.split("\n\n"), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT, unk_token=None, model_max_length=1 << 30,
    )


def _model(config: LMConfig, vocab_size: int):
    import transformers

    torch.manual_seed(config.seed)
    llama = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.blocks, num_attention_heads=config.heads,
        num_key_value_heads=config.heads, max_position_embeddings=2 * config.seqlen,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(llama)


def _learning_rate(config: LMConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then a cosine decay to ``lr / 10`` at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def train_lm(
    config: LMConfig, ids: torch.Tensor, vocab_size: int,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train a fresh ``LlamaForCausalLM`` on the token sequence ``ids`` at one torch thread.

    Each step draws ``batch_size`` windows of ``seqlen`` tokens at random starts (a generator
    seeded with ``config.seed``) and takes an AdamW step on their mean next-token loss, the
    gradient clipped to norm 1. The thread count is set to one for the duration (and put back):
    the result is then the same on every run.

    Args:
        config: architecture and recipe.
        ids: the training text's token ids, one long 1-D sequence.
        vocab_size: the tokenizer's vocabulary.
        log: ``log(message)`` every 50 steps, or ``None``.

    Returns:
        The trained model in eval mode, and the loss of every step.
    """
    if ids.numel() <= config.seqlen:
        raise ValueError(
            f"the training text has {ids.numel()} tokens, not more than one window of "
            f"{config.seqlen}"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model(config, vocab_size).train()
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        other = [p for n, p in model.named_parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.95),
        )
        generator = torch.Generator().manual_seed(config.seed)
        offsets = torch.arange(config.seqlen)
        losses = []
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step)
            starts = torch.randint(0, ids.numel() - config.seqlen + 1, (config.batch_size, 1),
                                   generator=generator)
            batch = {"input_ids": ids[starts + offsets]}
            loss = next_token_nll(model(**batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            if log is not None and ((step + 1) % 50 == 0 or step + 1 == config.steps):
                log(f"step {step + 1}/{config.steps}: training loss {losses[-1]:.3f}")
    finally:
        torch.set_num_threads(threads)
    return model.eval(), losses


def unigram_perplexity(train_ids: torch.Tensor, heldout_ids: torch.Tensor,
                       vocab_size: int) -> float:
    """Perplexity of the held-out tokens under the training tokens' unigram frequencies
    (add-one smoothed): the floor a language model must clearly beat.

    ``ppl = exp(-mean_t log p(t))`` with ``p(t) = (count(t) + 1) / (N + V)``.

    Example:
        >>> round(unigram_perplexity(torch.tensor([0, 0, 1]), torch.tensor([0, 1]), 2), 4)
        2.0412
    """
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    log_p = counts.log() - counts.sum().log()
    return math.exp(-float(log_p[heldout_ids].mean()))


@torch.no_grad()
def perplexity(model: nn.Module, batches) -> float:
    """``exp`` of the mean next-token loss of ``model`` over ``batches`` (equal-length windows,
    as :func:`l0prune.text_batches` gives), on the model's device."""
    device = next(model.parameters()).device
    return math.exp(mean_loss(model.eval(), batches, next_token_nll, device))


@dataclass
class BuiltinLM:
    """The built-in LM: its cache folder, the loaded model and tokenizer, and its text.

    Attributes:
        folder: the cache entry; ``folder / "model"`` is a ``save_pretrained`` folder.
        model: the ``LlamaForCausalLM``, in eval mode, KV cache off.
        tokenizer: its tokenizer.
        train_text: the training split of the corpus.
        heldout_text: the held-out split.
        info: what ``info.json`` holds (config, perplexities, seconds, versions).
    """

    folder: Path
    model: nn.Module
    tokenizer: object
    train_text: str
    heldout_text: str
    info: dict
    _ids: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def model_dir(self) -> Path:
        """The ``save_pretrained`` folder (model and tokenizer)."""
        return self.folder / "model"

    def batches(self, split: str, nsamples: int, seqlen: int | None = None, seed: int = 0,
                batch_size: int = 1) -> list[dict[str, torch.Tensor]]:
        """Token windows of one split: ``"train"`` drawn at random with ``seed`` (calibration),
        ``"heldout"`` consecutive from the start (perplexity); see
        :func:`l0prune.text_batches`. ``seqlen`` defaults to the training window."""
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        text = self.train_text if split == "train" else self.heldout_text
        if split not in self._ids:  # tokenised once (the training text takes seconds)
            self._ids[split] = self.tokenizer(text)["input_ids"]
        ids = self._ids[split]
        return text_batches(
            lambda _, **kwargs: {"input_ids": ids}, text, nsamples=nsamples,
            seqlen=seqlen or self.info["seqlen"],
            seed=seed, draw="random" if split == "train" else "consecutive",
            batch_size=batch_size,
        )


def _config(size: str | LMConfig) -> tuple[str, LMConfig]:
    if isinstance(size, LMConfig):
        return "custom", size
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)} or an LMConfig, got {size!r}")
    return size, SIZES[size]


def _entry(name: str, config: LMConfig) -> Path:
    """The cache folder: keyed by the recipe and the Python that supplies the corpus."""
    key = json.dumps([_FORMAT, asdict(config), platform.python_implementation(),
                      platform.python_version()])
    return cache_dir() / f"lm-{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _build(config: LMConfig, folder: Path, log: Callable[[str], None]) -> None:
    """Gather the corpus, learn the tokenizer, train, measure and write the entry's files."""
    import tokenizers
    import transformers

    corpus = stdlib_corpus()
    tokenizer = build_tokenizer(corpus.train, config.vocab_size)
    vocab = len(tokenizer)
    train_ids = torch.tensor(tokenizer(corpus.train)["input_ids"])
    heldout_ids = torch.tensor(tokenizer(corpus.heldout)["input_ids"])
    log(f"training the built-in LM ({config.blocks} blocks, hidden {config.hidden}, "
        f"{config.steps} steps of {config.batch_size} x {config.seqlen} tokens, one thread; "
        f"{train_ids.numel():,} training tokens); cached for next time in {folder.parent}")
    start = time.perf_counter()
    model, losses = train_lm(config, train_ids, vocab, log)
    seconds = time.perf_counter() - start
    heldout = text_batches(tokenizer, corpus.heldout, nsamples=HELDOUT_WINDOWS,
                           seqlen=config.seqlen, draw="consecutive", batch_size=16)
    info = {
        "config": asdict(config), "seqlen": config.seqlen,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_sha256": corpus.digest(),
        "train_files": corpus.train_files, "heldout_files": corpus.heldout_files,
        "train_tokens": train_ids.numel(), "heldout_tokens": heldout_ids.numel(),
        "heldout_windows": sum(len(b["input_ids"]) for b in heldout),
        "train_epochs": config.steps * config.batch_size * config.seqlen / train_ids.numel(),
        "final_train_loss": losses[-1],
        "heldout_perplexity": perplexity(model, heldout),
        "unigram_perplexity": unigram_perplexity(train_ids, heldout_ids, vocab),
        "train_seconds": seconds, "threads": 1,
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
    }
    log(f"built-in LM: held-out perplexity {info['heldout_perplexity']:.2f} (unigram "
        f"{info['unigram_perplexity']:.1f}), trained in {seconds:.0f} s")
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    (folder / "train.txt").write_text(corpus.train, encoding="utf-8")
    (folder / "heldout.txt").write_text(corpus.heldout, encoding="utf-8")
    (folder / "info.json").write_text(json.dumps(info, indent=1) + "\n")


@contextmanager
def _no_progress_bars():
    """No ``transformers`` progress bars while the entry is written and read (put back after)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def _load(folder: Path) -> BuiltinLM:
    from l0prune.io import hf

    model = hf.load_model(str(folder / "model"))
    model.config.use_cache = False
    return BuiltinLM(
        folder=folder, model=model, tokenizer=hf.load_tokenizer(str(folder / "model")),
        train_text=(folder / "train.txt").read_text(encoding="utf-8"),
        heldout_text=(folder / "heldout.txt").read_text(encoding="utf-8"),
        info=json.loads((folder / "info.json").read_text()),
    )


def builtin_lm(size: str | LMConfig = "default",
               log: Callable[[str], None] | None = None) -> BuiltinLM:
    """The built-in LM of ``size``, from the cache or trained now (then cached).

    Args:
        size: ``"default"`` (the benchmark's, about 5 minutes of one core to train),
            ``"tiny"`` (seconds), or an :class:`LMConfig`.
        log: ``log(message)`` for what happens (training, where the cache is); default: print
            to stderr.

    Returns:
        The :class:`BuiltinLM`; a fresh copy of the model on every call.

    Example:
        >>> lm = builtin_lm("tiny")  # doctest: +SKIP
        >>> lm.info["heldout_perplexity"] < lm.info["unigram_perplexity"]  # doctest: +SKIP
        True
    """
    name, config = _config(size)
    if log is None:
        def log(message: str) -> None:
            print(message, file=sys.stderr, flush=True)
    folder = _entry(name, config)
    with _no_progress_bars():
        if not (folder / "info.json").is_file():
            publish_folder(folder, lambda tmp: _build(config, tmp, log))
        return _load(folder)


def _main() -> None:
    """``python -m l0prune.demo.lm [SIZE]``: train or find the built-in LM; its model folder on
    stdout, its figures on stderr."""
    lm = builtin_lm(sys.argv[1] if len(sys.argv) > 1 else "default")
    print(json.dumps({k: lm.info[k] for k in ("heldout_perplexity", "unigram_perplexity",
                                               "parameters", "train_seconds")}),
          file=sys.stderr)
    print(lm.model_dir)


if __name__ == "__main__":
    _main()

