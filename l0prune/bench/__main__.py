"""``python -m l0prune.bench NAME [options]``: run one benchmark (``--help`` lists the names).

Each benchmark lives in its own module with a ``main(argv)``, imported only when chosen.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
}


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``argv`` (default: the command line) to the chosen benchmark's ``main``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m l0prune.bench",
        description="l0prune benchmarks; `python -m l0prune.bench NAME --help` for the options.",
    )
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's options")
    args = parser.parse_args(argv[:1])
    importlib.import_module(BENCHMARKS[args.benchmark]).main(argv[1:])


if __name__ == "__main__":
    main()
