"""``l0prune bench [NAME] [OPTIONS]``: the benchmark tables, printed and written as markdown,
by the benchmarks of :mod:`l0prune.bench` (each module's ``main(argv)``, imported only when
chosen; ``NAME`` one of :data:`BENCHMARKS`). The one entry point of the benchmarks.

With no name, solvers and models run in turn, each with its default output file (the others
run only when named); OPTIONS go to the benchmark as given (``l0prune bench solvers --help``
lists them). A bad name or option is one line and exit status 2, as everywhere on the command
line.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import UsageError

__all__ = ["BENCHMARKS", "add_parser", "run"]

#: Each benchmark's name and module.
BENCHMARKS = {
    "solvers": "l0prune.bench.solvers",
    "models": "l0prune.bench.models",
    "certify": "l0prune.bench.certify",
    "checkpoints": "l0prune.bench.checkpoints",
    "memory": "l0prune.bench.memory",
    "gpu": "l0prune.bench.gpu",
    "bert": "l0prune.bench.bert",
    "threads": "l0prune.bench.threads",
    "scale": "l0prune.bench.scale",
    "lm": "l0prune.bench.lm",
    "llmcompressor": "l0prune.bench.llmcompressor_side",
    "admm": "l0prune.bench.admm",
    "statistics": "l0prune.bench.layer_statistics",
    "convnet": "l0prune.bench.convnet",
    "wide": "l0prune.bench.wide",
}

#: What ``l0prune bench`` runs when no benchmark is named.
DEFAULT = ("solvers", "models")


def add_parser(subparsers) -> None:
    """Register ``bench`` on the command line's ``subparsers``; its options are not parsed
    here but passed on (the caller sets ``options`` to everything after ``bench``)."""
    parser = subparsers.add_parser(
        "bench", add_help=False,
        usage=f"l0prune bench [{'|'.join(BENCHMARKS)}] [OPTIONS]",
        help="run the benchmarks (markdown tables)",
        description="Run the benchmarks: solvers (every layer solver against OBS on the same "
                    "layers), models (the sparsest digits models within a loss tolerance, "
                    "against magnitude), certify (exact optima and certified gaps), "
                    "checkpoints (dense and compressed checkpoint sizes), memory (peak memory "
                    "of block-by-block pruning against the whole-model path on a random-init "
                    "LLaMA-style model), gpu (solver time per device), bert (pruning a "
                    "BERT-class encoder, solver seconds per method), threads (torch thread "
                    "counts on this machine), scale (layer problems solved here, on a local dask "
                    "cluster and on a process pool), lm (held-out perplexity of the built-in "
                    "language model per solver), llmcompressor (side by side with "
                    "llm-compressor's SparseGPT on a BERT encoder, given --llmcompressor-python "
                    "PATH), admm (ADMM's schedules against the published one) and statistics "
                    "(each layer's statistics against one X^T X product), convnet (a pitch "
                    "estimator pruned by every method), wide (block-diagonal statistics against "
                    "the full H, the full-size pitch network end to end, the solvers' working "
                    "memory); solvers and models when no name is given. Tables are printed and "
                    "written as "
                    "markdown (bench-results/NAME.md unless --out FILE is given). "
                    "`l0prune bench NAME --help` lists a benchmark's options, such as --quick "
                    "and --threads N.",
    )
    parser.set_defaults(run="l0prune.cli.bench_cmd:run", bench_help=parser.format_help)


@contextmanager
def _one_line_errors(name: str) -> Iterator[None]:
    """A benchmark's own argparse errors as one :class:`UsageError` line (argparse would print
    its usage and exit), for the length of the call."""
    original = argparse.ArgumentParser.error

    def error(parser, message):
        raise UsageError(f"bench {name}: {message} (see l0prune bench {name} --help)")

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark(s) with ``args.options``; returns the exit status."""
    options = list(args.options)
    if options[:1] in (["-h"], ["--help"]):
        print(args.bench_help())
        return 0
    if options[:1] and options[0] in BENCHMARKS:
        names, options = options[:1], options[1:]
    elif options[:1] and not options[0].startswith("-"):
        raise UsageError(
            f"bench: unknown benchmark {options[0]!r}; choose {', '.join(BENCHMARKS)} (see "
            "l0prune bench --help)"
        )
    else:
        names = list(DEFAULT)
        if "--out" in options:
            raise UsageError("--out names one file: give a benchmark name (one of "
                             f"{', '.join(BENCHMARKS)})")
    for name in names:
        with _one_line_errors(name):
            try:
                importlib.import_module(BENCHMARKS[name]).main(options)
            except SystemExit as done:  # its --help prints and exits 0
                return done.code if isinstance(done.code, int) else 0
    return 0
