"""The workflow benchmark: every workflow meets each sparsity; the table and the plot."""

import matplotlib.image
import pytest

from l0prune.bench.workflows import WORKFLOWS, WorkflowRow, plot, run, table


@pytest.mark.slow  # about a minute: five ADMM steps, a one-shot solve and an L0 run
def test_every_workflow_meets_the_sparsity_asked():
    rows, dense_accuracy = run("mlp", epochs=2, finetune_epochs=2, sparsities=(0.6,), alphas=())
    assert [(r.workflow, r.goal) for r in rows] == [(w, "60 %") for w in WORKFLOWS]
    for row in rows:
        assert row.sparsity == pytest.approx(0.6, abs=1 / 49152)
        assert 0 < row.accuracy <= 1 and row.ratio > 0
    assert 0.5 < dense_accuracy <= 1


def test_table_and_plot(tmp_path):
    rows = [WorkflowRow("mlp", w, goal, s, 1.0 + s / 10, 0.9 - s / 10, 1.0)
            for w in WORKFLOWS for goal, s in (("90 %", 0.9), ("alpha 1.05", 0.93))]
    text = table(rows, {"mlp": 0.96}, 10).splitlines()
    assert text[2] == ("| model | goal | workflow | sparsity | loss ratio | test accuracy | "
                       "seconds |")
    assert text[4] == "| mlp | 90 % | one-shot | 90.0 % | 1.0900 | 81.0 % | 1.0 |"
    assert text[-1] == "Dense test accuracy: mlp 96.0 %"
    plot(rows, {"mlp": 0.96}, tmp_path / "w.png")
    image = matplotlib.image.imread(tmp_path / "w.png")
    assert image.shape[0] > 300 and image.shape[1] > 500
