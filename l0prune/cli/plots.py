"""The two figures of a prune run, drawn from its reports (matplotlib, no display needed).
Only what was measured is drawn.

- ``sparsity_vs_loss.png``: validation loss over the dense loss against sparsity, per method:
  the dense model (at 0 %, ratio 1), every trial of the alpha search in order (the path; hollow
  markers failed the tolerance), the frontier through the measured points no other beats, and
  the model returned (a star). A fixed-sparsity run has no search: only the dense model and the
  result are drawn;
- ``layers.png``: per layer, the sparsity and the relative output error, methods side by side;
  a layer left dense has no error bar but the word "dense".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from l0prune.report import PruneReport

__all__ = ["frontier", "layers_plot", "sparsity_loss_plot"]

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _figure(height: float, width: float = 7.5) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _points(report: PruneReport) -> list[tuple[float, float, bool]]:
    """``(sparsity, loss ratio, met)`` of each trial, or of the result when there was none."""
    dense = report.dense_loss
    if report.trials:
        return [(t.sparsity, t.loss / dense, t.met) for t in report.trials]
    return [(report.sparsity, report.pruned_loss / dense, True)]


def frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats: none is as sparse or sparser with a lower loss.

    Example:
        >>> frontier([(0.0, 1.0), (0.5, 0.99), (0.6, 1.2), (0.7, 1.1), (0.4, 1.3)])
        [(0.5, 0.99), (0.7, 1.1)]
    """
    best, kept = float("inf"), []
    for sparsity, loss in sorted(points, key=lambda p: (-p[0], p[1])):
        if loss < best:
            best = loss
            kept.append((sparsity, loss))
    return kept[::-1]


def sparsity_loss_plot(runs: Sequence[tuple[str, PruneReport]], path: Path) -> Figure:
    """Write ``sparsity_vs_loss.png`` for ``runs`` (label, report with a dense loss).

    Returns:
        The figure written.
    """
    figure = _figure(4.8)
    axes = figure.add_subplot()
    alpha = next((r.alpha for _, r in runs if r.alpha is not None), None)
    axes.scatter([0.0], [1.0], marker="s", s=40, color="black", zorder=3, label="dense")
    for (label, report), color in zip(runs, _COLORS, strict=False):
        if report.trials:
            points = _points(report)
            xs = [100 * s for s, _, _ in points]
            ys = [y for _, y, _ in points]
            axes.plot(xs, ys, color=color, alpha=0.35, linewidth=0.8)
            axes.scatter(xs, ys, s=22, color=color,
                         facecolors=[color if met else "none" for _, _, met in points])
            edge = frontier([(0.0, 1.0)] + [(s, y) for s, y, _ in points])
            axes.plot([100 * s for s, _ in edge], [y for _, y in edge], color=color,
                      linewidth=1.8, label=f"{label}: frontier")
        if report.alpha_reached is None:  # no validation data: the sparsity alone
            axes.axvline(100 * report.sparsity, color=color,
                         label=f"{label}: {100 * report.sparsity:.1f} % sparse (no loss)")
            continue
        axes.scatter([100 * report.sparsity], [report.alpha_reached],
                     marker="*", s=180, color=color, edgecolors="black", zorder=3,
                     label=f"{label}: returned, {100 * report.sparsity:.1f} % sparse")
    if alpha is not None:
        axes.axhline(alpha, color="gray", linestyle="--", linewidth=1, label=f"alpha = {alpha:g}")
    axes.set_xlabel("sparsity of the pruned layers (%)")
    axes.set_ylabel("validation loss / dense loss")
    ratios = [float(y) for c in axes.collections for _, y in c.get_offsets()]
    if max(ratios) > 3 * min(ratios):  # far-off failed trials: a log scale keeps the rest apart
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(ScalarFormatter())
    title = ("Sparsity against loss: search path (hollow: over the tolerance) and frontier"
             if any(r.trials for _, r in runs) else "Sparsity against loss: dense and pruned")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return figure


def layers_plot(runs: Sequence[tuple[str, PruneReport]], path: Path) -> Figure:
    """Write ``layers.png``: per-layer sparsity and relative error of each run; a layer that
    kept every weight gets the word "dense" instead of an error bar (its error is round-off).

    Returns:
        The figure written.
    """
    layers = runs[0][1].layers
    names = [layer.name for layer in layers]
    figure = _figure(5.6, width=max(7.5, 0.3 * len(names)))
    top, bottom = figure.subplots(2, 1, sharex=True)
    width = 0.8 / len(runs)
    errors = [layer.relative_error for _, report in runs for layer in report.layers
              if layer.kept < layer.total and layer.relative_error > 0]
    floor = min(errors) / 3 if errors else 1e-6
    for i, ((label, report), color) in enumerate(zip(runs, _COLORS, strict=False)):
        by_name = {layer.name: layer for layer in report.layers}
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(names))]
        top.bar(xs, [100 * by_name[n].sparsity for n in names], width, color=color, label=label)
        pruned = [(x, by_name[n]) for x, n in zip(xs, names, strict=True)
                  if by_name[n].kept < by_name[n].total]
        bottom.bar([x for x, _ in pruned], [layer.relative_error for _, layer in pruned], width,
                   color=color)
        for x, n in zip(xs, names, strict=True):
            if by_name[n].kept == by_name[n].total:
                bottom.text(x, floor, "dense", rotation=90, ha="center", va="bottom",
                            fontsize=7, color=color)
    top.set_ylabel("sparsity (%)")
    top.set_ylim(0, 118)
    top.set_yticks(range(0, 101, 20))
    top.legend(fontsize=8, ncol=len(runs), loc="upper left")
    top.set_title("Per layer: weights removed and relative output error")
    bottom.set_ylabel("relative error")
    bottom.set_yscale("log")
    if not errors:
        bottom.set_ylim(floor / 3, 1)
    crowded = len(names) > 6
    bottom.set_xticks(range(len(names)))
    bottom.set_xticklabels(
        [f"{layer.name}\n{'x'.join(map(str, layer.shape))}" for layer in layers],
        rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8,
    )
    bottom.set_xlabel("layer")
    for axes in (top, bottom):
        axes.grid(True, axis="y", alpha=0.3)
    figure.savefig(path, dpi=120)
    return figure
