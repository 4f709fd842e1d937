"""Benchmarks: ``l0prune bench NAME`` with NAME one of solvers, admm, models, certify,
checkpoints, memory, gpu, threads, bert (see each module)."""

from __future__ import annotations

import argparse

import torch

__all__ = ["add_threads_option", "use_threads"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """The ``--threads N`` option every benchmark takes (torch CPU threads)."""
    parser.add_argument(
        "--threads", type=_positive_int, help="torch CPU threads (default: torch's)"
    )


def use_threads(threads: int | None) -> None:
    """Set torch's CPU threads when ``--threads`` was given."""
    if threads is not None:
        torch.set_num_threads(threads)
