"""The figures draw only what was measured: no frontier for a fixed-sparsity run, no error bar
for a layer left dense."""

import matplotlib

matplotlib.use("Agg")

from l0prune.cli.plots import layers_plot, sparsity_loss_plot  # noqa: E402
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
