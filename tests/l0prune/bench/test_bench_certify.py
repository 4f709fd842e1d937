"""The certification benchmark's tables on tiny inputs."""

import pytest

from l0prune.bench import certify
from l0prune.bench.layers import synthetic_layer
from solvers import LayerProblem, PerRow, solve
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
        assert gaps[2] == pytest.approx(gaps[1], abs=0.2)  # cone program = first order


def test_bad_options_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        certify.main(["--time-limit", "0", "--out", str(tmp_path / "x.md")])
    assert info.value.code == 2
    assert "--time-limit must be a positive number, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()
