"""Report: figures derived from the layers, a markdown table, JSON both ways."""

import json

import pytest

from l0prune.report import LayerReport, PruneReport, Trial


def _report():
    return PruneReport(
        layers=[
            LayerReport("features.0", [16, 1, 3, 3], 72, 144, 0.012, 0.5),
            LayerReport("fc", [64, 512], 3277, 32768, 0.034, 1.25),
        ],
        method="admm", budget="Unstructured", sequential=True,
        dense_loss=0.2, pruned_loss=0.209, loss_before_finetune=0.25, alpha=1.05,
        seconds=12.5, calibration_passes=3, validation_passes=9, finetune_steps=40,
        trials=[Trial("uniform", 0.5, 0.5, 0.209, 0.25, True)],
    )


def test_overall_figures():
    report = _report()
    assert report.kept == 3349 and report.total == 32912
    assert report.sparsity == pytest.approx(1 - 3349 / 32912)
    assert report.layers[0].sparsity == 0.5
    assert report.alpha_reached == pytest.approx(1.045)
    assert PruneReport([], "admm", "u", True).alpha_reached is None


def test_table_and_summary():
    text = str(_report())
    lines = text.splitlines()
    assert lines[0].startswith("| layer | shape | kept | sparsity | relative error | solver s |")
    assert "| features.0 | 16x1x3x3 | 72 / 144 | 50.0 % | 1.200e-02 | 0.50 |" in lines
    assert "| **all** | | 3,349 / 32,912 | 89.8 % | | 1.75 |" in lines
    assert "ratio 1.0450, alpha 1.05" in text and "before finetuning 0.25" in text
    assert "3 over the calibration data, 9 over the validation data" in text


def test_json_round_trip(tmp_path):
    report = _report()
    path = tmp_path / "report.json"
    text = report.to_json(path)
    assert path.read_text().strip() == text
    data = json.loads(text)
    assert data["sparsity"] == report.sparsity and data["alpha_reached"] == report.alpha_reached
    assert data["layers"][1]["sparsity"] == report.layers[1].sparsity
    assert PruneReport.from_json_string(text) == report


def test_from_json_reads_the_file_to_json_writes(tmp_path):
    """``to_json(path)`` writes a file, so ``from_json(path)`` reads one (it once parsed its
    argument as JSON text)."""
    report = _report()
    report.to_json(tmp_path / "report.json")
    assert PruneReport.from_json(tmp_path / "report.json") == report
    assert PruneReport.from_json(str(tmp_path / "report.json")) == report
    with pytest.raises(ValueError, match="path must be a JSON file .*use .*from_json_string"):
        PruneReport.from_json(report.to_json())
