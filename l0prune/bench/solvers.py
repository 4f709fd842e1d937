"""The solver benchmark: every method on the same layers and budgets, measured against OBS.

``l0prune bench solvers [--quick] [--out FILE] [--plot FILE] [--methods NAME ...]
[--threads N]``

Each method variant solves every layer of :func:`~l0prune.bench.layers.benchmark_layers` at
50 / 70 / 90 % unstructured sparsity and 2:4, each solve on a fresh :class:`~solvers.LayerProblem`
(default ``lam``, nothing cached from another method) and timed by its ``info["seconds"]``.
A row reports the mean and max relative error over the layers, the total seconds, and four
figures against OBS (SparseGPT) from the same run: the ratio of mean relative errors (weighted
towards the layers with the largest errors), the geometric mean over the layers of the per-layer
error ratio (every layer counts alike), the ratio of times and the number of layers where the
method's error is above OBS's. The table is printed
and written as markdown (default ``bench-results/solvers.md``).

A layer a budget cannot apply to is skipped with a note (2:4 needs an input size divisible by 4).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from solvers import NM, Budget, LayerProblem, Unstructured, solve

from . import add_threads_option, use_threads
from .layers import benchmark_layers

__all__ = ["VARIANTS", "BUDGETS", "Row", "main", "plot", "run", "table"]

#: ``(label, method, options)`` in the order of the table.
VARIANTS: list[tuple[str, str, dict]] = [
    ("magnitude", "magnitude", {}),
    ("magnitude+refit", "magnitude", {"refit": True}),
    ("wanda", "wanda", {}),
    ("obs", "obs", {}),
    ("obs+refit", "obs", {"refit": True}),
    ("iht", "iht", {}),
    ("admm", "admm", {}),
    ("admm (default schedule)", "admm", {"schedule": "default"}),
    ("admm (fast)", "admm", {"schedule": "fast"}),
    ("admm (published ALPS)", "admm", {"schedule": "alps", "swap_rounds": 0}),
    ("hard_concrete", "hard_concrete", {}),
]

#: ``(label, budget)`` of the sparsity axis.
BUDGETS: list[tuple[str, Budget]] = [
    ("50%", Unstructured(sparsity=0.5)),
    ("70%", Unstructured(sparsity=0.7)),
    ("90%", Unstructured(sparsity=0.9)),
    ("2:4", NM(2, 4)),
]

REFERENCE = "obs"
PUBLISHED = "admm (published ALPS)"
_WORSE_TOL = 1e-6  # relative: errors within float noise of OBS's do not count as worse

HEADER = [
    "method", "sparsity", "layers", "mean rel. error", "max rel. error", "seconds",
    "error / OBS", "per layer / OBS", "time / OBS", "worse than OBS", "error / ALPS",
    "time / ALPS",
]


@dataclass
class Row:
    """One method variant at one sparsity: relative error and seconds per layer."""

    label: str
    sparsity: str
    errors: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def mean_error(self) -> float:
        """Mean relative error over the layers."""
        return sum(self.errors.values()) / len(self.errors)

    @property
    def total_seconds(self) -> float:
        """Seconds summed over the layers."""
        return sum(self.seconds.values())


def _fits(budget: Budget, shape: tuple[int, int]) -> bool:
    try:
        budget.check(shape)
    except ValueError:
        return False
    return True


def run(
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]],
    variants: list[tuple[str, str, dict]],
    budgets: list[tuple[str, Budget]],
    progress=None,
) -> list[Row]:
    """Solve every layer with every variant under every budget the layer admits.

    Args:
        layers: ``name -> (W, H)``.
        variants: ``(label, method, options)``.
        budgets: ``(label, budget)``.
        progress: called with each finished :class:`Row`, if given.

    Returns:
        One :class:`Row` per budget and variant, budgets outermost.
    """
    rows = []
    for sparsity, budget in budgets:
        for label, method, options in variants:
            row = Row(label, sparsity)
            for name, (W, H) in layers.items():
                if not _fits(budget, tuple(W.shape)):
                    continue
                solution = solve(LayerProblem(W, H, budget=budget), method, **options)
                row.errors[name] = solution.relative_error
                row.seconds[name] = solution.info["seconds"]
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def _geometric_mean_ratio(row: Row, ref: Row) -> float:
    """``exp(mean log(e / e_ref))`` over the layers (a layer both solve exactly counts as 1)."""
    logs = [
        math.log(max(error, 1e-300) / max(ref.errors[name], 1e-300))
        for name, error in row.errors.items()
    ]
    return math.exp(sum(logs) / len(logs))


def table(rows: list[Row]) -> str:
    """The markdown table of ``rows``; ratios against the ``obs`` row of the same sparsity
    (``rows`` must hold one for every sparsity)."""
    reference = {row.sparsity: row for row in rows if row.label == REFERENCE}
    published = {row.sparsity: row for row in rows if row.label == PUBLISHED}
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        ref = reference[row.sparsity]
        worse = sum(
            row.errors[name] > ref.errors[name] * (1 + _WORSE_TOL) for name in row.errors
        )
        cells = [
            row.label,
            row.sparsity,
            str(len(row.errors)),
            f"{row.mean_error:.3e}",
            f"{max(row.errors.values()):.3e}",
            f"{row.total_seconds:.3f}",
            f"{row.mean_error / ref.mean_error:.3f}",
            f"{_geometric_mean_ratio(row, ref):.3f}",
            f"{row.total_seconds / ref.total_seconds:.2f}",
            str(worse),
        ]
        alps = published.get(row.sparsity)
        cells += [f"{row.mean_error / alps.mean_error:.3f}",
                  f"{row.total_seconds / alps.total_seconds:.2f}"] if alps else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _report(layers, rows, argv) -> str:
    notes = []
    names = ", ".join(f"{name} ({W.shape[0]}x{W.shape[1]})" for name, (W, _) in layers.items())
    for label, budget in BUDGETS:
        skipped = [n for n, (W, _) in layers.items() if not _fits(budget, tuple(W.shape))]
        if skipped:
            notes.append(f"{label} does not apply to (skips): {', '.join(skipped)}")
    command = shlex.join(["l0prune", "bench", "solvers", *argv])
    return "\n".join(
        [
            "# Solver benchmark",
            "",
            f"Layers: {names}.",
            "",
            "Relative error `tr((W'-W) H (W'-W)^T) / tr(W H W^T)` per layer (default `lam`); "
            "seconds summed over the layers. The last four columns compare with `obs` "
            "(SparseGPT) in the same run: ratio of mean relative errors, geometric mean of the "
            "per-layer error ratios, ratio of times, number of layers where the method's error "
            "is above OBS's; the last two compare with ADMM's published ALPS schedule: ratio "
            "of mean relative errors and of times.",
            "",
            table(rows),
            "",
            *(f"- {note}" for note in notes),
            f"- torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); "
            f"command: `{command}`",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Run the solver benchmark from the command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    names = sorted({label for label, _, _ in VARIANTS} | {m for _, m, _ in VARIANTS})
    parser = argparse.ArgumentParser(
        prog="l0prune bench solvers",
        description="Layer solvers against OBS (SparseGPT) on digits and synthetic layers.",
    )
    parser.add_argument("--quick", action="store_true", help="few small layers (for tests)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results/solvers.md"), help="markdown file"
    )
    parser.add_argument(
        "--plot", type=Path, help="PNG of error against seconds on the largest layers"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=names, metavar="NAME",
        help=f"methods or variant labels to run (obs always runs); one of {names}",
    )
    add_threads_option(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)

    chosen = set(args.methods or names)
    variants = [v for v in VARIANTS if v[0] == REFERENCE or v[0] in chosen or v[1] in chosen]
    layers = benchmark_layers(quick=args.quick)

    def progress(row: Row) -> None:
        print(f"{row.label} {row.sparsity}: {row.total_seconds:.2f} s", file=sys.stderr)

    rows = run(layers, variants, BUDGETS, progress)
    report = _report(layers, rows, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    if args.plot is not None:
        plot(layers, rows, args.plot)
    print(report)


def plot(layers: dict[str, tuple[torch.Tensor, torch.Tensor]], rows: list[Row], path: Path,
         count: int = 3) -> None:
    """Error against seconds on the ``count`` largest layers, for OBS and every ADMM variant in
    ``rows``, both as ratios to the published ALPS schedule's at the same sparsity (one marker
    per sparsity): left of 1 is faster, below 1 more accurate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    largest = sorted(layers, key=lambda n: -layers[n][0].numel())[:count]
    labels = [label for label, method, _ in VARIANTS if method == "admm" or label == REFERENCE]
    published = {row.sparsity: row for row in rows if row.label == PUBLISHED}
    markers = dict(zip(sorted(published), "osD^v", strict=False))
    fig, axes = plt.subplots(1, len(largest), figsize=(5 * len(largest), 4.2), squeeze=False)
    for ax, name in zip(axes[0], largest, strict=True):
        for color, label in zip(plt.cm.tab10.colors, labels, strict=False):
            for row in rows:
                alps = published.get(row.sparsity)
                if row.label != label or alps is None or name not in row.errors:
                    continue
                ax.plot(row.seconds[name] / alps.seconds[name],
                        row.errors[name] / alps.errors[name], markers[row.sparsity],
                        color=color, label=label if row.sparsity == min(published) else None)
        W = layers[name][0]
        ax.axhline(1.0, color="gray", lw=0.5)
        ax.axvline(1.0, color="gray", lw=0.5)
        ax.set(xscale="log", yscale="log", title=f"{name} ({W.shape[0]}x{W.shape[1]})",
               xlabel="seconds / published ALPS schedule's",
               ylabel="relative error / published ALPS schedule's")
        ax.legend(fontsize=7, title=", ".join(f"{m} {s}" for s, m in markers.items()),
                  title_fontsize=7)
    fig.suptitle(f"{torch.get_num_threads()} CPU thread(s)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
