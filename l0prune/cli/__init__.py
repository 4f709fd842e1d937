"""The ``l0prune`` command line: ``prune``, ``solve`` and ``bench``.

Bad input (a flag's value, a missing file, a ``MODULE:NAME`` that does not import) ends with one
line ``l0prune: error: ...`` and exit status 2; any other failure with one line and status 1
(``--traceback`` shows the traceback instead); Ctrl-C with status 130. A run that fails writes
no output.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

from . import bench_cmd, prune_cmd, solve_cmd
from .errors import UsageError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`UsageError` line, not usage text."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The ``l0prune`` parser with its three commands."""
    parser = _Parser(
        prog="l0prune",
        description="Optimization-based pruning of neural networks. `l0prune prune` with no "
                    "options runs the built-in demo.",
    )
    parser.add_argument("--version", action="version",
                        version=f"l0prune {importlib.metadata.version('l0prune')}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    common.add_argument("--quiet", action="store_true",
                        help="print nothing but errors (no progress bars)")
    common.add_argument("--traceback", action="store_true",
                        help="on a failure, show the Python traceback instead of one line")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    prune_cmd.add_parser(commands, [common])
    solve_cmd.add_parser(commands, [common])
    bench_cmd.add_parser(commands)
    return parser


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = None
    try:
        args, extra = parser.parse_known_args(argv)
        args.argv = argv
        if args.run is bench_cmd.run:
            args.options = argv[argv.index("bench") + 1:]
        elif extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see l0prune --help)")
        return args.run(args)
    except KeyboardInterrupt:
        print("l0prune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if getattr(args, "traceback", False):
            raise
        if isinstance(err, (UsageError, ValueError)):
            print(f"l0prune: error: {_first_line(err)}", file=sys.stderr)
            return 2
        print(f"l0prune: error: {type(err).__name__}: {_first_line(err)} (--traceback shows "
              "where)", file=sys.stderr)
        return 1
