"""``l0prune bench [solvers|models|lm|llmcompressor] [OPTIONS]``: the benchmark tables, printed
and written as markdown, by the benchmarks of :mod:`l0prune.bench` (each module's ``main(argv)``).

With no name ``solvers`` and ``models`` run in turn, each with its default output file; OPTIONS
go to the benchmark as given (``l0prune bench solvers --help`` lists them).
"""

from __future__ import annotations

import argparse
import importlib

from .errors import UsageError

__all__ = ["BENCHMARKS", "DEFAULT", "add_parser", "run"]

BENCHMARKS = {
    "solvers": "l0prune.bench.solvers",
    "models": "l0prune.bench.models",
    "lm": "l0prune.bench.lm",
    "llmcompressor": "l0prune.bench.llmcompressor_side",
}
#: The benchmarks run when none is named.
DEFAULT = ("solvers", "models")


def add_parser(subparsers) -> None:
    """Register ``bench`` on the command line's ``subparsers``; its options are not parsed
    here but passed on (the caller sets ``options`` to everything after ``bench``)."""
    parser = subparsers.add_parser(
        "bench", add_help=False, usage="l0prune bench [solvers|models|lm|llmcompressor] [OPTIONS]",
        help="run the solver and model benchmarks (markdown tables)",
        description="Run the benchmarks: solvers (every layer solver against OBS on the same "
                    "layers) and models (the sparsest digits models within a loss tolerance, "
                    "against magnitude), both when no name is given; lm (held-out perplexity "
                    "of the built-in language model per solver) and llmcompressor (side by "
                    "side with llm-compressor's SparseGPT on a BERT encoder, given "
                    "--llmcompressor-python PATH). Tables are printed and "
                    "written as markdown (bench-results/NAME.md unless --out FILE is given). "
                    "`l0prune bench NAME --help` lists a benchmark's options, such as --quick "
                    "and --threads N.",
    )
    parser.set_defaults(run=run, bench_help=parser.format_help)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark(s) with ``args.options``; returns the exit status."""
    options = list(args.options)
    if options[:1] in (["-h"], ["--help"]):
        print(args.bench_help())
        return 0
    if options[:1] and options[0] in BENCHMARKS:
        names, options = options[:1], options[1:]
    else:
        names = list(DEFAULT)
        if "--out" in options:
            raise UsageError(
                "--out names one file: give a benchmark name (" + ", ".join(BENCHMARKS) + ")"
            )
    for name in names:
        importlib.import_module(BENCHMARKS[name]).main(options)
    return 0
