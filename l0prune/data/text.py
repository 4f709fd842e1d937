"""Text as calibration and validation batches for language models.

SparseGPT, Wanda and ALPS calibrate on 128 windows of 2048 tokens drawn at random from a
tokenised corpus and measure perplexity on consecutive windows of held-out text.
:func:`text_batches` does both for any tokenizer: the text is tokenised as one sequence (piece
by piece, holding only the ids) and cut into windows of ``seqlen`` tokens, ``nsamples`` of them
drawn at random with ``seed`` (``draw="random"``, for calibration) or the first ``nsamples``
non-overlapping ones in order (``draw="consecutive"``, for validation). Every window has the
same length, so averaging the per-window mean next-token loss over windows is the
token-weighted mean.

Texts come from a file or a folder of ``.txt`` files (:func:`read_text`) or from a Hugging Face
dataset when the ``datasets`` package and a network are there (:func:`dataset_text`);
:func:`read_source` reads either from its command-line form.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["dataset_text", "read_source", "read_text", "text_batches"]

_DATASET = re.compile(
    r"(?P<name>[^:]+)(?::(?P<config>[^:\[]+))?:(?P<split>[^:\[]+(?:\[[^\]]*\])?)"
)


def read_text(path: str | Path) -> str:
    """The text of a file, or of every ``.txt`` file in a folder (sorted by name, joined by a
    blank line).

    Args:
        path: a text file or a folder.

    Returns:
        The text.

    Raises:
        ValueError: when the path does not exist, a folder holds no ``.txt`` file, a file is
            not UTF-8, or the text is empty.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for name, words in (("b.txt", "world"), ("a.txt", "hello")):
        ...         _ = open(os.path.join(d, name), "w").write(words)
        ...     read_text(d)
        'hello\\n\\nworld'
    """
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise ValueError(f"text folder {str(path)!r} holds no .txt file")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"text {str(path)!r}: no such file or folder")
    parts = []
    for file in files:
        try:
            parts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"text file {str(file)!r} is not UTF-8 ({err.reason})") from None
    text = "\n\n".join(parts)
    if not text.strip():
        raise ValueError(f"text {str(path)!r} is empty")
    return text


def dataset_text(name: str, config: str | None, split: str) -> str:
    """The text column of a Hugging Face dataset split, rows joined by a blank line.

    Args:
        name: the dataset (``"wikitext"``).
        config: its configuration (``"wikitext-2-raw-v1"``), or ``None``.
        split: the split, slices allowed (``"train"``, ``"test[:1000]"``).

    Returns:
        The text of the ``text`` column, or of the only string column.

    Raises:
        ValueError: one line, without the ``datasets`` package, when the dataset does not load
            (no network, unknown name) or has no text column.
    """
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"hf-dataset:{name} needs the datasets package and a network (pip install datasets);"
            " without them, give the text as a file: text:PATH"
        ) from None
    what = ":".join(p for p in (name, config, split) if p)
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # no network, unknown name or split: the library's own errors
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"hf-dataset:{what} does not load ({type(err).__name__}: {message}); without a "
            f"network, give the text as a file: text:PATH"
        ) from None
    columns = [c for c, f in data.features.items() if getattr(f, "dtype", None) == "string"]
    column = "text" if "text" in data.column_names else (columns[0] if len(columns) == 1 else None)
    if column is None:
        raise ValueError(
            f"hf-dataset:{what} has no 'text' column and not exactly one string column (columns:"
            f" {data.column_names})"
        )
    return "\n\n".join(data[column])


def read_source(source: str) -> str:
    """The text of ``text:PATH`` or ``hf-dataset:NAME[:CONFIG]:SPLIT``.

    Args:
        source: the source as written on the command line.

    Returns:
        The text.

    Raises:
        ValueError: for another form, or as :func:`read_text` / :func:`dataset_text`.
    """
    kind, _, rest = source.partition(":")
    if kind == "text" and rest:
        return read_text(rest)
    if kind == "hf-dataset":
        match = _DATASET.fullmatch(rest)
        if match:
            return dataset_text(match["name"], match["config"], match["split"])
    raise ValueError(
        f"a text source must be text:PATH or hf-dataset:NAME[:CONFIG]:SPLIT, got {source!r}"
    )


def _positive(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


#: Characters per piece the text is tokenised in: a tokenizer called on a whole corpus holds
#: about 250 times the text's size at once (a 4.4 MB text, 1 GB), one piece a bounded part.
PIECE = 1 << 16
#: Where a piece may end: before a single space between two non-spaces. Byte-level BPE
#: (GPT-2, OPT, LLaMA-3) and SentencePiece (``▁`` for a space) both start a word's tokens
#: there, so the pieces give the tokens of the whole text.
_CUT = re.compile(r"(?<=\S)(?= \S)")


def _pieces(text: str, size: int) -> Iterator[str]:
    """``text`` in consecutive pieces of about ``size`` characters, each cut at :data:`_CUT`
    (a text with no such place from some point on is one piece from there)."""
    start = 0
    while start < len(text):
        cut = _CUT.search(text, start + size) if start + size < len(text) else None
        end = len(text) if cut is None else cut.start()
        yield text[start:end]
        start = end


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, verbose=False, add_special_tokens=special)["input_ids"])


def _token_stream(tokenizer, text: str) -> Iterator[torch.Tensor]:
    """The tokens of ``text``, as one call on the whole text gives them (with the special
    tokens it adds to one sequence), in int32 parts, one piece of the text at a time."""
    pieces = _pieces(text, PIECE)
    first = next(pieces)
    plain, marked = _ids(tokenizer, first, False), _ids(tokenizer, first, True)
    at = next((i for i in range(len(marked) - len(plain) + 1)
               if marked[i:i + len(plain)] == plain), None)
    if at is None:  # special tokens mixed into the text: the whole text in one call
        yield torch.tensor(_ids(tokenizer, text, True), dtype=torch.int32)
        return
    yield torch.tensor(marked[:at + len(plain)], dtype=torch.int32)
    for piece in pieces:
        yield torch.tensor(_ids(tokenizer, piece, False), dtype=torch.int32)
    yield torch.tensor(marked[at + len(plain):], dtype=torch.int32)


def _tokens(tokenizer, text: str, limit: int | None) -> torch.Tensor:
    """The first ``limit`` tokens of ``text`` (all of them for ``None``), int32; tokenising
    stops once it has them."""
    parts, count = [], 0
    for part in _token_stream(tokenizer, text):
        parts.append(part)
        count += part.numel()
        if limit is not None and count >= limit:
            break
    return torch.cat(parts)[:limit]


def text_batches(
    tokenizer,
    text: str,
    *,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    draw: str = "random",
    batch_size: int = 1,
) -> list[dict[str, torch.Tensor]]:
    """Windows of ``seqlen`` tokens of ``text`` as batches ``{"input_ids": batch x seqlen,
    "attention_mask": batch x seqlen}`` (every window is full: its mask is all ones, there for
    the models and losses that read one).

    The text is tokenised piece by piece (:data:`PIECE` characters, cut before a space between
    two words), keeping only the token ids (4 bytes a token): the tokens of the whole text,
    with the special tokens the tokenizer adds to one sequence, without a tokenizer call on the
    whole corpus (about 250 times the text's size). ``"consecutive"`` stops once it has its
    windows; ``"random"`` needs every position, so it counts them all.

    Args:
        tokenizer: a Hugging Face tokenizer (or any callable taking ``add_special_tokens=``
            and giving ``{"input_ids": [...]}``).
        text: the text.
        nsamples: windows wanted; ``"consecutive"`` gives fewer when the text holds fewer.
        seqlen: tokens per window (at least 2: the loss predicts each token from the ones
            before it).
        seed: seeds the random draw.
        draw: ``"random"``: window starts drawn uniformly from every position (windows may
            overlap; SparseGPT's calibration); ``"consecutive"``: the first ``nsamples``
            non-overlapping windows from the start (perplexity evaluation).
        batch_size: windows per batch (the last batch may hold fewer).

    Returns:
        A list of dict batches, for :func:`l0prune.prune` as calibration or validation data.

    Raises:
        ValueError: for bad arguments, or a text shorter than one window.

    Example:
        >>> class Characters:  # any callable giving {"input_ids": [...]} works
        ...     def __call__(self, text, **kwargs):
        ...         return {"input_ids": [ord(c) for c in text]}
        >>> batches = text_batches(Characters(), "abcdefgh", nsamples=3, seqlen=3,
        ...                        draw="consecutive")
        >>> [b["input_ids"].tolist() for b in batches]
        [[[97, 98, 99]], [[100, 101, 102]]]
        >>> batches[0]["attention_mask"].tolist()
        [[1, 1, 1]]
    """
    _positive(nsamples, "nsamples")
    _positive(seqlen, "seqlen", 2)
    _positive(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if draw not in ("random", "consecutive"):
        raise ValueError(f"draw must be 'random' or 'consecutive', got {draw!r}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    ids = _tokens(tokenizer, text, nsamples * seqlen if draw == "consecutive" else None)
    if ids.numel() < seqlen:
        raise ValueError(
            f"the text has {ids.numel():,} tokens, fewer than one window of seqlen={seqlen}: "
            "give more text or a smaller seqlen"
        )
    if draw == "random":
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=generator)
    else:
        starts = torch.arange(min(nsamples, ids.numel() // seqlen)) * seqlen
    windows = torch.stack([ids[s:s + seqlen] for s in starts.tolist()]).to(torch.int64)
    return [{"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
            for chunk in windows.split(batch_size)]
