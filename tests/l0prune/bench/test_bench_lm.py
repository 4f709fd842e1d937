"""The LM benchmark on the built-in LM's tiny size: the table, the plot, the figures."""

import json
import math
import os
import re

import pytest

import l0prune
from l0prune.bench import lm as bench
from l0prune.cli import main as l0prune_main

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def quick_run(tiny_lm, tmp_path_factory):
    """``l0prune bench lm --size tiny --quick`` at 90 % and 2:4 (markdown, plot)."""
    out = tmp_path_factory.mktemp("bench-lm")
    before = os.environ.get("L0PRUNE_CACHE")
    os.environ["L0PRUNE_CACHE"] = str(tiny_lm.folder.parent)
    try:
        assert l0prune_main([
            "bench", "lm", "--size", "tiny", "--quick", "--methods", "magnitude", "wanda", "obs",
            "admm", "--patterns", "90 %", "2:4", "--nsamples", "8", "--heldout-windows", "32",
            "--threads", "1", "--out", str(out / "lm.md"), "--plot", str(out / "lm.png")]) == 0
    finally:
        if before is None:
            del os.environ["L0PRUNE_CACHE"]
        else:
            os.environ["L0PRUNE_CACHE"] = before
    return out


def _rows(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_quick_table_is_finite_and_pruning_costs_perplexity(quick_run):
    text = (quick_run / "lm.md").read_text()
    dense = float(re.search(r"Dense held-out perplexity: ([0-9]+\.[0-9]+)", text)[1])
    rows = _rows(text)
    assert rows[0] == ["method", "sequential", "90 % ppl", "90 % CPU s", "2:4 ppl", "2:4 CPU s"]
    keys = [(r[0], r[1]) for r in rows[2:]]
    assert keys == [("magnitude", "-"), ("wanda", "yes"), ("wanda", "no"), ("obs", "yes"),
                    ("obs", "no"), ("admm", "yes"), ("admm", "no")]
    for row in rows[2:]:
        at_90, at_24 = float(row[2]), float(row[4])
        assert math.isfinite(at_90) and math.isfinite(at_24)
        assert at_90 >= dense - 0.01  # 90 % of the blocks' weights gone: never better
    by_key = {(r[0], r[1]): float(r[2]) for r in rows[2:]}
    # at 90 % the solvers that use the data beat the one that does not
    assert by_key[("obs", "yes")] < by_key[("magnitude", "-")]
    assert by_key[("admm", "yes")] < by_key[("magnitude", "-")]
    assert "ADMM against OBS:" in text and "- 90 %, sequential yes: ADMM" in text
    assert (quick_run / "lm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((quick_run / "lm.json").read_text())
    assert round(saved["dense_perplexity"], 2) == dense and len(saved["rows"]) == 14
    assert {(r["method"], r["pattern"]) for r in saved["rows"]} == {
        (m, p) for m in ("magnitude", "wanda", "obs", "admm") for p in ("90 %", "2:4")}


def test_prune_once_meets_the_pattern_and_leaves_the_dense_model(tiny_lm):
    calibration = tiny_lm.batches("train", 4, batch_size=4)
    heldout = tiny_lm.batches("heldout", 8, batch_size=8)
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    dense = bench.perplexity(tiny_lm.model, heldout)
    row, model = bench.prune_once(tiny_lm.model, calibration, heldout, "obs", "70 %", False)
    assert row.sparsity == pytest.approx(0.7, abs=1e-3)
    assert row.perplexity == pytest.approx(bench.perplexity(model, heldout))
    assert row.perplexity > dense
    row, model = bench.prune_once(tiny_lm.model, calibration, heldout, "magnitude", "2:4", True)
    assert row.sparsity == 0.5 and row.sequential is None
    masks = l0prune.masks_of(model)
    assert masks
    for name, mask in masks.items():
        assert name.startswith("model.layers.")
        groups = mask.reshape(mask.shape[0], -1, 4)
        assert (groups.sum(-1) == 2).all(), name
    for name, value in tiny_lm.model.state_dict().items():
        assert value.equal(before[name]), name


def test_comparisons_follow_the_rows():
    rows = [bench.Row("obs", "70 %", True, 30.0, 0.7, 1.0, 1.0),
            bench.Row("admm", "70 %", True, 29.0, 0.7, 5.0, 5.0),
            bench.Row("obs", "2:4", False, 20.0, 0.5, 1.0, 1.0),
            bench.Row("admm", "2:4", False, 21.0, 0.5, 5.0, 5.0)]
    assert bench.comparisons(rows) == [
        "- 70 %, sequential yes: ADMM 29.00 is below OBS 30.00 (0.967x)",
        "- 2:4, sequential no: ADMM 21.00 is not below OBS 20.00 (1.050x)",
    ]
