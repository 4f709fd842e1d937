"""Text as calibration and validation batches for language models.

SparseGPT, Wanda and ALPS calibrate on 128 windows of 2048 tokens drawn at random from a
tokenised corpus and measure perplexity on consecutive windows of held-out text.
:func:`text_batches` does both for any tokenizer: the text is tokenised once, as one sequence,
and cut into windows of ``seqlen`` tokens, ``nsamples`` of them drawn at random with ``seed``
(``draw="random"``, for calibration) or the first ``nsamples`` non-overlapping ones in order
(``draw="consecutive"``, for validation). Every window has the same length, so averaging the
per-window mean next-token loss over windows is the token-weighted mean.

Texts come from a file or a folder of ``.txt`` files (:func:`read_text`) or from a Hugging Face
dataset when the ``datasets`` package and a network are there (:func:`dataset_text`);
:func:`read_source` reads either from its command-line form.
"""

from __future__ import annotations

import re
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

    Args:
        tokenizer: a Hugging Face tokenizer (called once on the whole text, with its special
            tokens as it adds them to one sequence).
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
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.int64)
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
    windows = torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
    return [{"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
            for chunk in windows.split(batch_size)]
