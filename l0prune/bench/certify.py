"""The certification benchmark: exact optima against the heuristics, certified gaps at scale.

``l0prune bench certify [--quick] [--table {exact,certified}] [--out FILE]
[--threads N] [--time-limit S]``

Two tables, written as markdown (default ``bench-results/certify.md``) and printed:

1. *Exact*: synthetic layers (:func:`~l0prune.bench.layers.synthetic_layer`) of growing size under
   each budget type, solved by ``method="exact"``; its seconds and each heuristic's gap to the
   optimum, ``(f - f*) / f``. A ladder stops at the first size not proven within the time limit.
2. *Certified*: the solver benchmark's layers (digits MLP and CNN, synthetic up to 1536 x 384) at
   70 % unstructured sparsity and 2:4; the best heuristic's objective ``f`` and, for each lower
   bound tier of :data:`solvers.BOUNDS`, the certified gap ``(f - lb) / f`` and its seconds. The
   cone program and the SDP only run within their size guards.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from solvers import (
    BOUNDS,
    NM,
    Budget,
    LayerProblem,
    PerRow,
    Structured,
    Unstructured,
    lower_bound,
    solve,
)
from solvers.bounds import PERSPECTIVE_MAX_WEIGHTS, SDP_MAX_INPUTS, SDP_MAX_WEIGHTS
from solvers.cardinality import Cardinality

from . import add_threads_option, use_threads
from .layers import benchmark_layers, synthetic_layer

__all__ = ["HEURISTICS", "LADDERS", "certified_table", "exact_table", "main"]

#: ``(label, method, options)`` of the heuristics compared with the optimum.
HEURISTICS = [
    ("magnitude+refit", "magnitude", {"refit": True}),
    ("obs", "obs", {}),
    ("iht", "iht", {}),
    ("admm", "admm", {}),
    ("hard_concrete", "hard_concrete", {}),
]

#: ``(label, budget, shapes)``: each ladder's layer sizes, smallest first.
LADDERS: list[tuple[str, Budget, list[tuple[int, int]]]] = [
    ("per-row 50%", PerRow(sparsity=0.5), [(4, n) for n in (8, 16, 32, 48, 64, 80, 96, 128)]),
    ("2:4", NM(2, 4), [(4, n) for n in (8, 16, 32, 64, 96, 128, 192, 256)]),
    ("unstructured 50%", Unstructured(sparsity=0.5), [(o, 8) for o in (1, 2, 4, 6, 8, 10, 12)]),
    ("structured 50%", Structured(sparsity=0.5), [(16, n) for n in (8, 16, 32, 48, 64, 96)]),
]
QUICK_LADDERS: list[tuple[str, Budget, list[tuple[int, int]]]] = [
    ("per-row 50%", PerRow(sparsity=0.5), [(2, 8)]),
    ("unstructured 50%", Unstructured(sparsity=0.5), [(1, 8), (2, 8)]),
]

#: ``(label, budget)`` of the certified table.
BUDGETS: list[tuple[str, Budget]] = [("70%", Unstructured(sparsity=0.7)), ("2:4", NM(2, 4))]
#: Heuristics whose best objective the bounds certify (the fast ones).
CERTIFIED = ["magnitude+refit", "obs", "admm"]


def _gap(f: float, reference: float) -> float:
    return (f - reference) / f if f > 0 else 0.0


def exact_table(ladders, heuristics, time_limit: float, progress=print) -> str:
    """Table 1 (see the module docstring) as markdown."""
    header = ["budget", "shape", "binaries / program", "programs", "exact s", "f*",
              *(f"gap {label}" for label, _, _ in heuristics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, budget, shapes in ladders:
        for seed, (out, inp) in enumerate(shapes):
            W, H = synthetic_layer(out, inp, seed=seed, outliers=min(4, inp // 8))
            problem = LayerProblem(W.double(), H.double(), budget=budget)
            solution = solve(problem, "exact", time_limit=time_limit, max_binaries=10**6)
            proven = solution.info["converged"]
            f_star = solution.objective
            rows_apart = Cardinality.of(budget, problem.shape).rows_independent
            binaries = Cardinality.of(budget, (1 if rows_apart else out, inp)).atoms
            cells = [label, f"{out}x{inp}", str(binaries), str(solution.info["programs"]),
                     f"{solution.info['seconds']:.2f}" if proven else f"> {time_limit:g}",
                     f"{f_star:.6g}" if proven else "not proven"]
            for _, method, options in heuristics:
                f = solve(problem, method, **options).objective
                cells.append(f"{_gap(f, f_star):.2%}" if proven else "")
            lines.append("| " + " | ".join(cells) + " |")
            progress(lines[-1])
            if not proven:
                break
    return "\n".join(lines)


def _bound_cell(problem: LayerProblem, method: str, f: float) -> str:
    out, inp = problem.shape
    if (method == "perspective" and out * inp > PERSPECTIVE_MAX_WEIGHTS) or (
        method == "sdp" and (inp > SDP_MAX_INPUTS or out * inp > SDP_MAX_WEIGHTS)
    ):
        return "—"
    start = time.perf_counter()
    lb = lower_bound(problem, method)
    seconds = time.perf_counter() - start
    if lb > f * (1 + 1e-9):
        raise RuntimeError(f"{method} bound {lb!r} above the heuristic's objective {f!r}")
    return f"{_gap(f, lb):.2%} ({seconds:.1f} s)"


def certified_table(layers, heuristics, progress=print) -> str:
    """Table 2 (see the module docstring) as markdown."""
    header = ["layer", "shape", "budget", "best heuristic", "f", *(f"gap {b} (s)" for b in BOUNDS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, budget in BUDGETS:
        for name, (W, H) in layers.items():
            try:
                budget.check(tuple(W.shape))
            except ValueError:
                continue
            problem = LayerProblem(W.double(), H.double(), budget=budget)
            found = {h: solve(problem, m, **o).objective for h, m, o in heuristics}
            best = min(found, key=found.get)
            f = found[best]
            cells = [name, f"{W.shape[0]}x{W.shape[1]}", label, best, f"{f:.6g}"]
            cells += [_bound_cell(problem, method, f) for method in BOUNDS]
            lines.append("| " + " | ".join(cells) + " |")
            progress(lines[-1])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the certification benchmark from the command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="l0prune bench certify",
        description="Exact optima against the heuristics; certified gaps on real layers.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny ladders and layers (tests)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results/certify.md"), help="markdown file"
    )
    parser.add_argument(
        "--table", choices=["exact", "certified"], help="run one of the two tables (default both)"
    )
    add_threads_option(parser)
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="seconds per exact solve (default 60)"
    )
    args = parser.parse_args(argv)
    use_threads(args.threads)
    if not args.time_limit > 0:
        parser.error(f"--time-limit must be a positive number, got {args.time_limit}")

    heuristics = HEURISTICS

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    sections = ["# Certification benchmark", ""]
    if args.table in (None, "exact"):
        ladders = QUICK_LADDERS if args.quick else LADDERS
        sections += [
            "## Exact optima",
            "",
            "Synthetic layers (default `lam`), `method=\"exact\"` (ECOS_BB on the perspective "
            f"program, {args.time_limit:g} s limit); the gap of each heuristic to the optimum is "
            "`(f - f*) / f`. A ladder stops at the first size not proven within the limit.",
            "",
            exact_table(ladders, heuristics, args.time_limit, progress),
            "",
        ]
    if args.table in (None, "certified"):
        fast = [h for h in heuristics if h[0] in CERTIFIED]
        sections += [
            "## Certified gaps",
            "",
            "Best of " + ", ".join(f"`{h[0]}`" for h in fast) + " against each lower bound: "
            "`(f - lb) / f` and the bound's seconds; `—` where the tier's size guard "
            "excludes the layer.",
            "",
            certified_table(benchmark_layers(quick=args.quick), fast, progress),
            "",
        ]
    command = shlex.join(["l0prune", "bench", "certify", *argv])
    report = "\n".join(
        [
            *sections,
            f"- torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); "
            f"command: `{command}`",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
