"""The ``l0prune`` command line: ``prune``, ``solve``, ``convert`` and ``bench``.

Bad input (a flag's value, a missing file, a ``MODULE:NAME`` that does not import) ends with one
line ``l0prune: error: ...`` and exit status 2; any other failure with one line and status 1
(``--traceback`` shows the traceback instead); Ctrl-C (SIGINT) with status 130 and SIGTERM with
143, each after the same clean-up as a failure. A run that fails writes no output.

The parser is built from modules that import neither torch nor a solver; a command's run
(``MODULE:FUNCTION``) is imported once the arguments parse, so ``--help`` and a mistyped flag
answer at once. The command line runs OpenMP's threads with a passive wait
(``OMP_WAIT_POLICY=PASSIVE`` unless set, before torch loads): on a busy machine spinning
threads slowed runs many times over (:mod:`l0prune.pipeline.threads`).

Messages go through the ``l0prune`` logger, which the command line shows on stderr, one line
each (information as it is, warnings as ``l0prune: warning: ...``; ``--quiet`` keeps warnings
and errors only); progress bars write to stderr themselves. dask's own log lines below warnings
are kept off the console: ``DASK_LOGGING__DISTRIBUTED=warning`` unless set, which the worker
processes inherit.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from . import bench_cmd, convert_cmd, prune_cmd, solve_cmd
from .errors import UsageError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`UsageError` line, not usage text."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The ``l0prune`` parser with its four commands."""
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
                        help="print only the results and errors (no progress or log lines)")
    common.add_argument("--traceback", action="store_true",
                        help="on a failure, show the Python traceback instead of one line")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    prune_cmd.add_parser(commands, [common])
    solve_cmd.add_parser(commands, [common])
    convert_cmd.add_parser(commands, [common])
    bench_cmd.add_parser(commands)
    return parser


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class Terminated(BaseException):
    """SIGTERM, raised where the program is (as SIGINT raises ``KeyboardInterrupt``), so that
    every ``finally`` and ``except BaseException`` clean-up runs: the model is put back and a
    half-written output folder removed."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (main thread only: Python
    delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"l0prune: warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    with _sigterm_raises(), warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line, as the errors
        try:
            return _main(argv)
        except Terminated:
            print("l0prune: terminated", file=sys.stderr)
            return 128 + signal.SIGTERM


class _Lines(logging.Formatter):
    """A message as it is, a warning or worse as ``l0prune: warning: message``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"l0prune: {record.levelname.lower()}: {message}"
        return message


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes (tests capture it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextmanager
def showing_messages(quiet: bool) -> Iterator[None]:
    """While the block runs, the ``l0prune`` logger's messages are shown on stderr (warnings
    and worse alone when ``quiet``); dask's below warnings are not."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logger = logging.getLogger("l0prune")
    handler = _Stderr()
    handler.setFormatter(_Lines())
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _command(reference: str):
    """The function of a ``MODULE:FUNCTION`` reference, its module imported now."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = None
    try:
        args, extra = parser.parse_known_args(argv)
        args.argv = argv
        if args.run.startswith("l0prune.cli.bench_cmd:"):
            args.options = argv[argv.index("bench") + 1:]
        elif extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see l0prune --help)")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with showing_messages(getattr(args, "quiet", False)):
            return _command(args.run)(args)
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
