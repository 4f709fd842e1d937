"""The checkpoint benchmark: sizes of dense and compressed Hugging Face folders of a pruned LLM.

``l0prune bench checkpoints [--quick] [--hidden H] [--blocks B] [--vocab V]
[--out FILE] [--threads N]``

A random-init LLaMA-style causal LM (default: hidden 1024, MLP 2816, 8 blocks, vocabulary
4096, fp32: 111M parameters, 92 % of them in the blocks' linear layers, close to a 7B model's
96 %) is pruned by :func:`l0prune.prune` with ``magnitude`` (the size depends only on the
pattern, not on which weights the solver keeps) at 50 % and 90 % unstructured and at 2:4, and
written by :func:`l0prune.save_pretrained` in both formats. Each row gives the compressed weights
file against the dense one, over the pruned weights alone and over the whole checkpoint
(embeddings, head and norms stay dense), the seconds to write and read each, and whether
:func:`l0prune.load_pretrained` gives back every tensor bit for bit. The table is printed and
written as markdown (default ``bench-results/checkpoints.md``). ``--quick``: hidden 256, 2 blocks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import l0prune
from l0prune.model.masks import permanent_state_dict

from . import add_threads_option, use_threads

__all__ = ["Row", "main", "measure", "table"]

PATTERNS = {"50 %": {"sparsity": 0.5}, "90 %": {"sparsity": 0.9}, "2:4": {"budget": "2:4"}}


@dataclass
class Row:
    """One sparsity pattern's checkpoints."""

    pattern: str
    dense_bytes: int
    compressed_bytes: int
    pruned_ratio: float
    whole_ratio: float
    save_seconds: tuple[float, float]
    load_seconds: tuple[float, float]
    identical: bool


def _model(hidden: int, blocks: int, vocab: int):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(2.75 * hidden),
        num_hidden_layers=blocks, num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64), max_position_embeddings=2048,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure(pattern: str, hidden: int, blocks: int, vocab: int, folder: Path) -> Row:
    """Prune a fresh model to ``pattern``, write both folders under ``folder``, read them back.

    Args:
        pattern: a key of :data:`PATTERNS`.
        hidden: the model's hidden size.
        blocks: its number of blocks.
        vocab: its vocabulary.
        folder: where the checkpoints go.

    Returns:
        The :class:`Row`.
    """
    model = _model(hidden, blocks, vocab)
    window = {"input_ids": torch.randint(0, vocab, (1, 16),
                                         generator=torch.Generator().manual_seed(0))}
    options = dict(PATTERNS[pattern])
    if options.get("budget") == "2:4":
        options["budget"] = l0prune.NM(2, 4)
    l0prune.prune(model, [window], method="magnitude", sequential=False, progress=False,
                  **options)
    pruned = {f"{n}.weight" for n in l0prune.masks_of(model)}
    dense, dense_save = _timed(lambda: l0prune.save_pretrained(model, folder / "dense"))
    compressed, compressed_save = _timed(
        lambda: l0prune.save_pretrained(model, folder / "compressed", format="compressed"))
    reference = permanent_state_dict(model)
    dense_back, dense_load = _timed(lambda: l0prune.load_pretrained(folder / "dense"))
    back, compressed_load = _timed(lambda: l0prune.load_pretrained(folder / "compressed"))
    identical = all(
        torch.equal(tensor, reference[name])
        for loaded in (dense_back, back) for name, tensor in loaded.state_dict().items()
    )
    stored = {t.name: t for t in compressed.tensors}
    pruned_bytes = sum(stored[n].bytes for n in pruned)
    pruned_dense = sum(reference[n].numel() * reference[n].element_size() for n in pruned)
    return Row(
        pattern, dense.weight_bytes, compressed.weight_bytes, pruned_bytes / pruned_dense,
        compressed.weight_bytes / dense.weight_bytes, (dense_save, compressed_save),
        (dense_load, compressed_load), identical,
    )


def table(rows: list[Row], description: str) -> str:
    """The rows as a markdown table under a one-line description."""
    lines = [
        description,
        "",
        "| pattern | dense file | compressed file | compressed / dense: pruned weights | "
        "whole checkpoint | write s (dense / compressed) | read s (dense / compressed) | "
        "reloads bit for bit |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.pattern} | {r.dense_bytes / 2**20:.1f} MiB | {r.compressed_bytes / 2**20:.1f} "
            f"MiB | {r.pruned_ratio:.3f} | {r.whole_ratio:.3f} | {r.save_seconds[0]:.1f} / "
            f"{r.save_seconds[1]:.1f} | {r.load_seconds[0]:.1f} / {r.load_seconds[1]:.1f} | "
            f"{'yes' if r.identical else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the checkpoint benchmark, print the table and write it to ``--out``.

    Example:
        >>> main(["--quick", "--out", "/tmp/checkpoints.md"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(prog="l0prune bench checkpoints")
    parser.add_argument("--quick", action="store_true", help="hidden 256, 2 blocks")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (1024)")
    parser.add_argument("--blocks", type=int, default=8, help="blocks (8)")
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary (4096)")
    parser.add_argument("--out", default="bench-results/checkpoints.md",
                        help="markdown output file")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hidden, blocks = (256, 2) if args.quick else (args.hidden, args.blocks)
    rows = []
    for pattern in PATTERNS:
        with tempfile.TemporaryDirectory() as folder:
            rows.append(measure(pattern, hidden, blocks, args.vocab, Path(folder)))
            print(table(rows[-1:], f"{pattern} done"), flush=True)
    model = _model(hidden, blocks, args.vocab)
    total = sum(p.numel() for p in model.parameters())
    description = (
        f"LLaMA-style causal LM, hidden {hidden}, {blocks} blocks, vocabulary {args.vocab}, "
        f"fp32, {total / 1e6:.1f}M parameters; torch threads: {torch.get_num_threads()}"
    )
    text = table(rows, description)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
