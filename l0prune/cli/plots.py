"""The two figures of a prune run, drawn from its reports (matplotlib, no display needed).
Only what was measured is drawn.

- ``sparsity_vs_loss.png``: validation loss over the dense loss against sparsity, per method:
  the dense model (at 0 %, ratio 1), every trial of the alpha search in order (the path; hollow
  markers failed the tolerance), the frontier through the measured points no other beats, and
  the model returned (a star). A fixed-sparsity run has no search: only the dense model and the
  result are drawn;
- ``layers.png``: per layer, the sparsity and the relative output error of each method, laid
  out to stay readable from 3 to 300 layers: bars side by side for a few layers, a heatmap of
  layer kind x block for the repeated blocks of a transformer, else one row per layer; a layer
  left dense has no error but the word "dense" (a gray cell in a heatmap).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from l0prune.report import PruneReport

# A font matplotlib falls back from (its cache may not list its own STIX fonts) is no news for
# the run's user: the figures are drawn either way, and the run's stderr stays the run's.
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)

__all__ = ["FEW_LAYERS", "Grid", "block_grid", "frontier", "layers_plot", "sparsity_loss_plot"]

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


#: Up to this many layers, ``layers.png`` draws a bar per layer and method side by side.
FEW_LAYERS = 12


@dataclass
class Grid:
    """Layers laid out as kinds (rows) by block (columns): ``transformer.h.3.attn.c_attn`` is
    kind ``attn.c_attn`` of block 3 in the stack ``transformer.h``; a layer outside the blocks
    is a row of its own, in a last column ``other``.

    Attributes:
        rows: the row labels, block kinds first.
        columns: the block indices, then ``"other"`` when a layer is outside the blocks.
        cells: per layer name, its ``(row, column)``.
        stack: the part of the names before the block index when all block kinds share it
            (``"transformer.h"``), else ``""`` (the rows then keep it).
    """

    rows: list[str]
    columns: list[int | str]
    cells: dict[str, tuple[int, int]]
    stack: str


def block_grid(names: Sequence[str]) -> Grid | None:
    """The :class:`Grid` of ``names`` when they share a block structure (each kind in two
    blocks or more, fewer than half as many rows as layers), else ``None``.

    Example:
        >>> grid = block_grid([f"h.{i}.{k}" for i in range(3) for k in ("attn", "mlp")] + ["head"])
        >>> grid.rows, grid.columns, grid.cells["h.2.mlp"], grid.cells["head"], grid.stack
        (['attn', 'mlp', 'head'], [0, 1, 2, 'other'], (1, 2), (2, 3), 'h')
    """
    placed: dict[str, tuple[str, str, int | None]] = {}
    for name in names:
        parts = name.split(".")
        index = next((j for j, part in enumerate(parts) if part.isdigit()), None)
        if index is None:
            placed[name] = ("", name, None)
        else:
            placed[name] = (".".join(parts[:index]), ".".join(parts[index + 1:]) or "*",
                            int(parts[index]))
    blocks = {(stack, kind) for stack, kind, i in placed.values() if i is not None}
    outside = [name for name, (_, _, i) in placed.items() if i is None]
    counts = {key: sum(1 for s, k, i in placed.values() if (s, k) == key and i is not None)
              for key in blocks}
    if not blocks or min(counts.values()) < 2 or 2 * (len(blocks) + len(outside)) > len(names):
        return None
    stacks = {stack for stack, _ in blocks}
    shared = next(iter(stacks)) if len(stacks) == 1 else ""
    kinds = []
    for stack, kind, i in placed.values():
        label = kind if shared or not stack else f"{stack}.*.{kind}"
        if i is not None and label not in kinds:
            kinds.append(label)
    columns: list[int | str] = sorted({i for _, _, i in placed.values() if i is not None})
    if outside:
        columns.append("other")
    where = {c: j for j, c in enumerate(columns)}
    cells = {}
    for name, (stack, kind, i) in placed.items():
        if i is None:
            cells[name] = (len(kinds) + outside.index(name), where["other"])
        else:
            label = kind if shared or not stack else f"{stack}.*.{kind}"
            cells[name] = (kinds.index(label), where[i])
    return Grid(kinds + outside, columns, cells, shared)


def layers_plot(runs: Sequence[tuple[str, PruneReport]], path: Path) -> Figure:
    """Write ``layers.png``: each layer's sparsity and relative error, per run.

    Up to :data:`FEW_LAYERS` layers, bars side by side per layer; more, when the names share a
    block structure (a transformer's ``blocks.N.kind``), two heatmaps per run, kinds by block
    (:func:`block_grid`); else horizontal bars, one row per layer. A layer that kept every
    weight gets no error (its error is round-off): the word "dense", or a gray cell.

    Returns:
        The figure written.
    """
    names = [layer.name for layer in runs[0][1].layers]
    grid = block_grid(names) if len(names) > FEW_LAYERS else None
    if len(names) <= FEW_LAYERS:
        figure = _vertical_bars(runs)
    elif grid is not None:
        figure = _heatmaps(runs, grid)
    else:
        figure = _horizontal_bars(runs)
    figure.savefig(path, dpi=120)
    return figure


def _errors(runs) -> list[float]:
    """The positive errors of the layers pruned (a dense layer's error is round-off)."""
    return [layer.relative_error for _, report in runs for layer in report.layers
            if layer.kept < layer.total and layer.relative_error > 0]


def _vertical_bars(runs) -> Figure:
    """A few layers: bars of each run side by side, names and shapes under them."""
    layers = runs[0][1].layers
    names = [layer.name for layer in layers]
    figure = _figure(5.6)
    top, bottom = figure.subplots(2, 1, sharex=True)
    width = 0.8 / len(runs)
    errors = _errors(runs)
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
    return figure


def _horizontal_bars(runs) -> Figure:
    """Many layers without a block structure: one row per layer, sparsity on the left and
    relative error on the right, runs side by side within a row."""
    layers = runs[0][1].layers
    figure = _figure(1.4 + 0.17 * len(layers) * max(1, len(runs) / 2), width=10)
    left, right = figure.subplots(1, 2, sharey=True)
    height = 0.8 / len(runs)
    errors = _errors(runs)
    floor = min(errors) / 3 if errors else 1e-6
    for i, ((label, report), color) in enumerate(zip(runs, _COLORS, strict=False)):
        by_name = {layer.name: layer for layer in report.layers}
        ys = [j + (i - (len(runs) - 1) / 2) * height for j in range(len(layers))]
        left.barh(ys, [100 * by_name[x.name].sparsity for x in layers], height, color=color,
                  label=label)
        pruned = [(y, by_name[x.name]) for y, x in zip(ys, layers, strict=True)
                  if by_name[x.name].kept < by_name[x.name].total]
        right.barh([y for y, _ in pruned], [x.relative_error for _, x in pruned], height,
                   color=color)
        for y, x in zip(ys, layers, strict=True):
            if by_name[x.name].kept == by_name[x.name].total:
                right.text(floor, y, "dense", va="center", fontsize=6, color=color)
    left.set_yticks(range(len(layers)))
    left.set_yticklabels([f"{x.name} ({'x'.join(map(str, x.shape))})" for x in layers],
                         fontsize=7)
    left.set_ylim(len(layers) - 0.5, -0.5)
    left.set_xlim(0, 100)
    left.set_xlabel("sparsity (%)")
    figure.legend(fontsize=8, loc="outside upper right", ncol=len(runs))
    right.set_xscale("log")
    right.set_xlim(floor / 2, 2 * max(errors) if errors else 1)
    right.set_xlabel("relative error")
    for axes in (left, right):
        axes.grid(True, axis="x", alpha=0.3)
        axes.xaxis.set_ticks_position("both")
        axes.tick_params(axis="x", labeltop=True)
    figure.suptitle("Per layer: weights removed and relative output error")
    return figure


def _heatmaps(runs, grid: Grid) -> Figure:
    """Layers of repeated blocks: per run, sparsity and relative error as kinds by block."""
    import numpy as np
    from matplotlib import colors

    shape = (len(grid.rows), len(grid.columns))
    width = min(24.0, max(7.5, 3.0 + 0.2 * shape[1]))
    figure = _figure((1.1 + 0.3 * shape[0]) * 2 * len(runs) + 0.6, width=width)
    panels = figure.subplots(2 * len(runs), 1, squeeze=False)[:, 0]
    errors = _errors(runs)
    norm = colors.LogNorm(min(errors), max(errors)) if errors else None
    step = max(1, -(-shape[1] // 40))  # at most about 40 block labels
    for i, (label, report) in enumerate(runs):
        sparsity, error, dense = (np.full(shape, np.nan) for _ in range(3))
        for layer in report.layers:
            cell = grid.cells[layer.name]
            sparsity[cell] = 100 * layer.sparsity
            if layer.kept == layer.total:
                dense[cell] = 1.0
            elif layer.relative_error > 0:
                error[cell] = layer.relative_error
        for axes, values, title, bar in (
            (panels[2 * i], sparsity, f"{label}: sparsity (%)", dict(vmin=0, vmax=100)),
            (panels[2 * i + 1], error, f"{label}: relative output error (gray: kept dense)",
             dict(norm=norm)),
        ):
            image = axes.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis",
                                interpolation="nearest", **bar)
            if values is error:
                axes.imshow(np.ma.masked_invalid(dense), aspect="auto", interpolation="nearest",
                            cmap=colors.ListedColormap(["lightgray"]), vmin=0, vmax=1)
            figure.colorbar(image, ax=axes, pad=0.01, fraction=0.04)
            axes.set_title(title, fontsize=9, loc="left")
            axes.set_yticks(range(shape[0]))
            axes.set_yticklabels(grid.rows, fontsize=7)
            ticks = list(range(0, shape[1], step))
            if grid.columns[-1] == "other" and shape[1] - 1 not in ticks:
                ticks.append(shape[1] - 1)
            axes.set_xticks(ticks)
            axes.set_xticklabels([str(grid.columns[j]) for j in ticks], fontsize=7)
            axes.set_xticks(np.arange(-0.5, shape[1]), minor=True)
            axes.set_yticks(np.arange(-0.5, shape[0]), minor=True)
            axes.grid(which="minor", color="white", linewidth=0.5)
            axes.tick_params(which="minor", length=0)
    where = f"block of {grid.stack}" if grid.stack else "block"
    panels[-1].set_xlabel(where)
    figure.suptitle(f"Per layer: weights removed and relative output error, {len(grid.cells)} "
                    f"layers as kind x block")
    return figure
