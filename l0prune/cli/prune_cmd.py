"""``l0prune prune``: its flags (the run is :mod:`l0prune.cli.prune_run`, imported only to
run, so that ``--help`` and a mistyped flag answer at once)."""

from __future__ import annotations

import argparse

from .config import add_arguments

__all__ = ["DESCRIPTION", "add_parser"]

DESCRIPTION = """\
Prune a trained model layer by layer and write a report, plots and the pruned weights.
Without --model: the built-in digits CNN (trained on first use, then cached), pruned with ADMM
to the sparsest model whose validation loss is within alpha = 1.02 of the dense one, finetuned,
and compared with magnitude pruning under the same settings. Flags override --config."""


def add_parser(subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``prune`` on the command line's ``subparsers``."""
    parser = subparsers.add_parser(
        "prune", parents=parents, help="prune a model and write a report (default: a demo)",
        description=DESCRIPTION,
    )
    parser.add_argument("--config", metavar="RECIPE.toml",
                        help="a recipe: TOML with the long flag names as keys")
    add_arguments(parser)
    parser.set_defaults(run="l0prune.cli.prune_run:run")
