"""``l0prune solve``: its flags (the run is :mod:`l0prune.cli.solve_run`, imported only to
run, so that ``--help`` and a mistyped flag answer at once)."""

from __future__ import annotations

import argparse

from solvers.registry import methods

from .tensor_files import SUFFIXES

__all__ = ["add_parser"]


def add_parser(subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``solve`` on the command line's ``subparsers``."""
    files = "/".join(SUFFIXES)
    parser = subparsers.add_parser(
        "solve", parents=parents, help="solve one layer's pruning problem from files",
        description=f"Solve one layer's pruning problem from tensor files ({files}; "
                    "FILE:KEY picks one tensor of a state dict or safetensors file).",
    )
    parser.add_argument("weight", metavar="W|DIR", help="the layer's weight, out x in; or a "
                        "folder of problems (l0prune prune --save-problems DIR), all solved")
    second = parser.add_mutually_exclusive_group()
    second.add_argument("--hessian", metavar="H", help="second moment of the inputs, in x in")
    second.add_argument("--inputs", metavar="X", help="the layer's inputs, rows x in")
    parser.add_argument("--sparsity", metavar="S", help="fraction of weights removed, in [0, 1)")
    parser.add_argument("--budget", metavar="B",
                        help="unstructured, per-row, structured or N:M such as 2:4 (default: "
                             "unstructured)")
    parser.add_argument("--method", metavar="NAME", default="admm",
                        help=f"solver: {', '.join(methods())} (default: admm)")
    parser.add_argument("--lam", metavar="L",
                        help="ridge weight (default: 0.01 x mean of diag H; 0 for H = I)")
    parser.add_argument("--certify", action="store_true",
                        help="also compute a certified lower bound on the optimum and the gap")
    parser.add_argument("--bound", metavar="TIER", default="lagrangian",
                        help="the lower bound tier --certify computes, such as separable, "
                             "lagrangian (default), perspective, sdp, row_sdp or branch")
    parser.add_argument("--time-limit", metavar="S",
                        help="--method exact: seconds for the branch and bound (default: 300)")
    parser.add_argument("--max-binaries", metavar="N",
                        help="--method exact: the most binary variables one program may have "
                             "(default: 40; the time grows exponentially with it)")
    parser.add_argument("--seed", metavar="N", type=int, default=0,
                        help="seed of solvers that draw random numbers (default: 0)")
    parser.add_argument("--device", metavar="DEVICE", help="where to compute (default: cpu)")
    parser.add_argument("--out", metavar="FILE", help=f"write the pruned weight ({files})")
    parser.add_argument("--workers", metavar="N", help="DIR: solve on a local dask cluster of N "
                        "worker processes, one thread each")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="DIR: solve on the running dask "
                        "cluster whose scheduler is at ADDRESS (tcp://HOST:8786)")
    parser.add_argument("--retries", metavar="N", help="DIR with --workers: how many times a "
                        "layer whose worker died is started again (default: 3)")
    parser.set_defaults(run="l0prune.cli.solve_run:run")
