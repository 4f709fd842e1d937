"""ADMM settings against the published schedule, side by side, and where a solve's time goes.

``l0prune bench admm [--quick] [--threads N] [--repeat R] [--out FILE]``

Two tables, both in CPU seconds (``time.process_time``: on a shared machine wall seconds carry
the other jobs' load):

- every benchmark layer (:func:`~l0prune.bench.layers.benchmark_layers`) at 50 / 70 / 90 % and
  2:4, each problem solved by the published schedule and then by every setting of
  :data:`SETTINGS` back to back (interleaved, so a change of load hits all alike); per sparsity
  the ratio of mean relative errors to the published schedule's (the solver benchmark's
  ``error / ALPS``), the geometric mean of the per-layer ratios, the largest per-layer ratio, and
  the ratio of summed seconds;
- the phases of one solve on the largest layers (:data:`PHASE_LAYERS`): the eigendecomposition,
  the ADMM iterations, the final refit, the swap search and the safeguard, median of ``--repeat``
  solves;
- the safeguard with and without its early exit (:func:`solvers.safeguard.best_of` with and
  without ``curvature``) on the published schedule's answer to every problem: CPU seconds, best
  of two, and whether the two decisions are identical.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from solvers import LayerProblem, Unstructured, safeguard, solve
from solvers import admm as admm_module
from solvers.admm import SCHEDULES
from solvers.magnitude import diagonal_score

from . import add_threads_option, use_threads
from .layers import benchmark_layers
from .solvers import BUDGETS, _fits

__all__ = ["PUBLISHED", "SETTINGS", "compare", "phases", "safeguard_table", "main"]

#: The reference: the published ALPS schedule, no swap search.
PUBLISHED = {"schedule": "alps", "swap_rounds": 0}

#: ``label -> admm options``: the library's settings and the variants the README reports.
SETTINGS: dict[str, dict] = {
    "auto (the default)": {},
    "default": {"schedule": "default"},
    "fast": {"schedule": "fast"},
    "fast, refit_iter=15": {"schedule": "fast", "refit_iter": 15},
    "default, swap_flops=3e7": {"schedule": replace(SCHEDULES["default"], swap_flops=3e7)},
    "default, 1.3 above 50 % moved": {"schedule": replace(
        SCHEDULES["default"], factors=(1.3, 1.1, 1.05, 1.03), tiers=(0.5, 0.1, 0.005),
        swap_flops=3e7)},
    "default, 1.3 above 30 % moved": {"schedule": replace(
        SCHEDULES["default"], factors=(1.3, 1.1, 1.05, 1.03), tiers=(0.3, 0.1, 0.005),
        swap_flops=3e7)},
}

#: The layers whose phases are timed (the three largest of the benchmark).
PHASE_LAYERS = ("bert.output", "bert.intermediate", "synthetic.1536x384")


def _timed(problem: LayerProblem, options: dict) -> tuple[float, float]:
    """``(relative error, CPU seconds)`` of one ADMM solve of a fresh copy of ``problem``."""
    fresh = LayerProblem(problem.W, problem.H, budget=problem.budget)
    start = time.process_time()
    solution = solve(fresh, "admm", **options)
    return solution.relative_error, time.process_time() - start


def compare(layers: dict, settings: dict[str, dict], budgets=BUDGETS) -> str:
    """The interleaved table: each setting against :data:`PUBLISHED` (see the module docstring)."""
    results = {label: {} for label in ["published", *settings]}
    for sparsity, budget in budgets:
        for name, (W, H) in layers.items():
            if not _fits(budget, tuple(W.shape)):
                continue
            problem = LayerProblem(W, H, budget=budget)
            for label, options in [("published", PUBLISHED), *settings.items()]:
                results[label][sparsity, name] = _timed(problem, options)
    ref = results["published"]
    lines = ["| setting | sparsity | error / ALPS | per layer (geometric mean) | largest per "
             "layer | time / ALPS |", "|---|---|---|---|---|---|"]
    for label in settings:
        got = results[label]
        for sparsity, _ in budgets:
            keys = [key for key in ref if key[0] == sparsity]
            ratios = [got[k][0] / ref[k][0] if ref[k][0] > 0 else 1.0 for k in keys]
            error = sum(got[k][0] for k in keys) / sum(ref[k][0] for k in keys)
            seconds = sum(got[k][1] for k in keys) / sum(ref[k][1] for k in keys)
            geometric = math.exp(sum(math.log(max(r, 1e-300)) for r in ratios) / len(ratios))
            lines.append(f"| {label} | {sparsity} | {error:.3f} | {geometric:.3f} | "
                         f"{max(ratios):.3f} | {seconds:.2f} |")
    return "\n".join(lines)


def phases(layers: dict, repeat: int = 3, sparsities=(0.5, 0.9)) -> str:
    """The per-phase table of one solve (see the module docstring)."""
    spent: dict[str, float] = {}

    def timing(module, name: str, key: str):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.process_time()
            out = original(*args, **kwargs)
            spent[key] = spent.get(key, 0.0) + time.process_time() - start
            return out

        return original, timed

    patched = [(admm_module, "finish", "finish"), (safeguard, "best_of", "safeguard"),
               (safeguard, "swap_search", "swaps")]
    originals = []
    for module, name, key in patched:
        original, timed = timing(module, name, key)
        originals.append((module, name, original))
        setattr(module, name, timed)
    lines = ["| layer | sparsity | setting | iterations | eigendecomposition | iterations' "
             "seconds | refit | swaps | safeguard | total |", "|---|---|---|---|---|---|---|---|"
             "---|---|"]
    try:
        for name, (W, H) in layers.items():
            for sparsity in sparsities:
                for label, options in [("alps", PUBLISHED), ("fast", {"schedule": "fast"}),
                                       ("default", {"schedule": "default"})]:
                    rows = []
                    for _ in range(repeat):
                        spent.clear()
                        problem = LayerProblem(W, H, budget=Unstructured(sparsity=sparsity))
                        start = time.process_time()
                        problem.scaled.eigh  # noqa: B018 - computed here to time it alone
                        eigh = time.process_time() - start
                        solution = solve(problem, "admm", **options)
                        total = time.process_time() - start
                        tail = spent["finish"]
                        rows.append((eigh, total - eigh - tail,
                                     tail - spent.get("safeguard", 0) - spent.get("swaps", 0),
                                     spent.get("swaps", 0.0), spent.get("safeguard", 0.0), total))
                    cells = [statistics.median(r[i] for r in rows) for i in range(6)]
                    lines.append(
                        f"| {name} ({W.shape[0]}x{W.shape[1]}) | {sparsity:.0%} | {label} | "
                        f"{solution.info['iterations']} | "
                        + " | ".join(f"{c:.2f}" for c in cells) + " |")
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
    return "\n".join(lines)


def safeguard_table(layers: dict, budgets=BUDGETS) -> str:
    """The safeguard's seconds with and without the early exit (see the module docstring)."""
    lines = ["| sparsity | layers | seconds without | seconds with | identical |",
             "|---|---|---|---|---|"]
    for sparsity, budget in budgets:
        spent, same, count = [0.0, 0.0], True, 0
        for W, H in layers.values():
            if not _fits(budget, tuple(W.shape)):
                continue
            problem = LayerProblem(W, H, budget=budget)
            answer = solve(problem, "admm", **PUBLISHED)
            candidates = {"diagonal": budget.select(diagonal_score(problem)),
                          "magnitude": budget.select(problem.W * problem.W)}
            bound = safeguard.curvature(problem.scaled.eigh[0])
            outcomes = []
            for slot, curvature in enumerate((0.0, bound)):
                best = math.inf
                for _ in range(2):
                    start = time.process_time()
                    outcome = safeguard.best_of(problem, answer.weight, answer.mask, candidates,
                                                curvature=curvature)
                    best = min(best, time.process_time() - start)
                spent[slot] += best
                outcomes.append(outcome)
            (w0, m0, n0), (w1, m1, n1) = outcomes
            same &= torch.equal(w0, w1) and torch.equal(m0, m1) and n0 == n1
            count += 1
        lines.append(f"| {sparsity} | {count} | {spent[0]:.2f} | {spent[1]:.2f} | "
                     f"{'yes' if same else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run both tables from the command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="l0prune bench admm",
        description="ADMM settings against the published schedule, interleaved; phase times.",
    )
    parser.add_argument("--quick", action="store_true", help="few small layers (for tests)")
    parser.add_argument("--repeat", type=int, default=3, help="solves per phase timing")
    parser.add_argument("--out", type=Path, default=Path("bench-results/admm.md"),
                        help="markdown file")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    layers = benchmark_layers(quick=args.quick)
    largest = sorted(layers, key=lambda n: -layers[n][0].numel())[:3]
    chosen = [n for n in PHASE_LAYERS if n in layers] or largest
    report = "\n".join([
        "# ADMM settings against the published schedule", "",
        compare(layers, SETTINGS), "",
        "## Where one solve's time goes (CPU seconds)", "",
        phases({n: layers[n] for n in chosen}, repeat=args.repeat), "",
        "## The safeguard with and without its early exit (CPU seconds)", "",
        safeguard_table(layers), "",
        f"- torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); command: "
        f"`{shlex.join(['l0prune', 'bench', 'admm', *argv])}`", "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
