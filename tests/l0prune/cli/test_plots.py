"""The figures draw only what was measured: no frontier for a fixed-sparsity run, no error bar
for a layer left dense; the per-layer figure stays readable from 3 to 300 layers."""

import matplotlib
import pytest

matplotlib.use("Agg")

from l0prune.cli.plots import block_grid, layers_plot, sparsity_loss_plot  # noqa: E402
from l0prune.report import LayerReport, PruneReport, Trial  # noqa: E402


def _fixed(method, loss):
    layers = [LayerReport("fc1", [16, 8], 64, 128, 0.05, 0.1),
              LayerReport("fc2", [4, 16], 64, 64, 3e-13, 0.1)]
    return PruneReport(layers, method, "u", True, dense_loss=0.5, pruned_loss=loss)


def _drawn_points(figure):
    """Every (x, y) a line or marker of the figure's first axes goes through."""
    axes = figure.axes[0]
    points = {(float(x), float(y)) for line in axes.lines if not line.get_label().startswith(
        "alpha") for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)}
    points |= {(float(x), float(y)) for c in axes.collections for x, y in c.get_offsets()}
    return points


def test_a_fixed_sparsity_run_draws_the_dense_model_and_the_result_only(tmp_path):
    runs = [("admm", _fixed("admm", 0.55)), ("magnitude", _fixed("magnitude", 0.6))]
    figure = sparsity_loss_plot(runs, tmp_path / "s.png")
    sparsity = 100 * runs[0][1].sparsity
    assert _drawn_points(figure) == {(0.0, 1.0), (sparsity, 1.1), (sparsity, 1.2)}
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert not any("frontier" in label for label in labels)


def test_the_search_frontier_goes_through_measured_points_only(tmp_path):
    report = _fixed("admm", 0.52)
    report.alpha = 1.05
    report.trials = [Trial("uniform", 0.5, 0.5, 0.51, None, True),
                     Trial("uniform", 0.75, 0.75, 0.6, None, False),
                     Trial("uniform", 0.62, 0.62, 0.52, None, True)]
    figure = sparsity_loss_plot([("admm", report)], tmp_path / "s.png")
    measured = {(0.0, 1.0)} | {(100 * t.sparsity, t.loss / 0.5) for t in report.trials}
    drawn = _drawn_points(figure)
    returned = (100 * report.sparsity, report.pruned_loss / 0.5)
    assert measured <= drawn and drawn - measured <= {returned}
    frontier = next(line for line in figure.axes[0].lines
                    if line.get_label() == "admm: frontier")
    assert list(frontier.get_xdata()) == [0.0, 50.0, 62.0, 75.0]  # Pareto: each sparser, worse


def test_a_dense_layer_is_marked_dense_without_an_error_bar(tmp_path):
    runs = [("admm", _fixed("admm", 0.55))]
    figure = layers_plot(runs, tmp_path / "l.png")
    bottom = figure.axes[1]
    heights = [patch.get_height() for patch in bottom.patches]
    assert heights == [0.05]  # fc1 only: fc2 kept every weight
    assert [t.get_text() for t in bottom.texts] == ["dense"]
    assert abs(bottom.texts[0].get_position()[0] - 1.0) < 1e-9  # at fc2


KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _many(names):
    """Two runs over ``names``: layer ``i`` at sparsity ``(i % 9) / 10`` (0: kept dense)."""
    def report(method, shift):
        layers = [LayerReport(n, [64, 64], 4096 - 4096 * ((i + shift) % 9) // 10, 4096,
                              1e-3 * (1 + (i + shift) % 9), 0.1) for i, n in enumerate(names)]
        return PruneReport(layers, method, "u", True, dense_loss=1.0, pruned_loss=1.1)

    return [("admm", report("admm", 0)), ("magnitude", report("magnitude", 1))]


def _overlapping_labels(figure):
    """Pairs of tick labels of one axis of ``figure`` that are drawn over each other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    found = []
    for axes in figure.axes:
        for labels in (axes.get_xticklabels(), axes.get_yticklabels()):
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels
                     if t.get_visible() and t.get_text()]
            found += [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1:]
                      if box.overlaps(other)]
    return found


@pytest.mark.parametrize("names", [
    ["fc1", "fc2", "fc3"],
    [f"transformer.h.{b}.{k}" for b in range(7) for k in ("attn.c_attn", "attn.c_proj",
                                                           "mlp.c_fc", "mlp.c_proj")],
    [f"model.layers.{b}.{k}" for b in range(5) for k in KINDS] + ["lm_head"],
    [f"model.layers.{b}.{k}" for b in range(43) for k in KINDS][:299] + ["lm_head"],
    [f"conv_{i}" for i in range(40)],
], ids=["3", "28 gpt2", "36 llama", "300 llama", "40 without blocks"])
def test_layers_png_is_readable_from_3_to_300_layers(tmp_path, names):
    figure = layers_plot(_many(names), tmp_path / "layers.png")
    assert _overlapping_labels(figure) == []
    width, height = figure.get_size_inches() * 120
    assert width <= 3000 and height <= 8000


def test_transformer_layers_are_a_heatmap_of_kind_by_block(tmp_path):
    names = [f"model.layers.{b}.{k}" for b in range(5) for k in KINDS] + ["lm_head"]
    grid = block_grid(names)
    assert grid.rows == [*KINDS, "lm_head"] and grid.columns == [0, 1, 2, 3, 4, "other"]
    assert grid.stack == "model.layers" and grid.cells["model.layers.3.mlp.up_proj"] == (5, 3)
    runs = _many(names)
    figure = layers_plot(runs, tmp_path / "layers.png")
    panels = [axes for axes in figure.axes if axes.get_title(loc="left")]  # not colorbars
    assert [axes.get_title(loc="left") for axes in panels] == [
        "admm: sparsity (%)", "admm: relative output error (gray: kept dense)",
        "magnitude: sparsity (%)", "magnitude: relative output error (gray: kept dense)"]
    sparsity = panels[0].images[0].get_array()  # admm's sparsity, kinds x blocks
    for layer in runs[0][1].layers:
        assert sparsity[grid.cells[layer.name]] == pytest.approx(100 * layer.sparsity)
    assert sparsity.mask[grid.cells["lm_head"][0], 0]  # no lm_head in block 0
    error, dense = panels[1].images  # admm's errors, and its dense layers in gray
    kept_dense = [x for x in runs[0][1].layers if x.kept == x.total]
    assert kept_dense and all(error.get_array().mask[grid.cells[x.name]] and
                              not dense.get_array().mask[grid.cells[x.name]] for x in kept_dense)


def test_names_without_a_block_structure_get_no_grid():
    assert block_grid([f"conv_{i}" for i in range(40)]) is None
    assert block_grid(["features.0", "features.3", "classifier.1"]) is None
