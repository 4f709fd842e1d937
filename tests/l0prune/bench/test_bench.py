"""The benchmark's layers (their H against the layer's real output change) and the solver table."""

import pytest
import torch

from l0prune.bench import solvers as bench
from l0prune.bench.layers import digits_layers, synthetic_layer
from l0prune.cli import main as l0prune_main
from l0prune.demo.digits import load_digits_data
from solvers import NM, Unstructured


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """The quick solver benchmark (magnitude, wanda, obs) run through ``l0prune.bench``."""
    out = tmp_path_factory.mktemp("bench") / "solvers.md"
    assert l0prune_main(["bench", "solvers", "--quick", "--methods", "magnitude", "wanda",
                         "obs", "--threads", "1", "--out", str(out)]) == 0
    return out.read_text()


def table_rows(report: str) -> list[list[str]]:
    lines = [line for line in report.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_table_header_and_rows(quick_report):
    rows = table_rows(quick_report)
    assert rows[0] == bench.HEADER
    assert set(rows[1]) == {"---"}
    labels = ["magnitude", "magnitude+refit", "wanda", "obs", "obs+refit"]
    expected = [(label, s) for s, _ in bench.BUDGETS for label in labels]
    assert [(r[0], r[1]) for r in rows[2:]] == expected


def test_table_from_rows():
    """Every cell from the rows' figures: seconds summed over layers, ratios against obs."""
    obs = bench.Row("obs", "70%", {"a": 0.1, "b": 0.4}, {"a": 1.0, "b": 0.5})
    admm = bench.Row("admm", "70%", {"a": 0.05, "b": 0.1}, {"a": 3.0, "b": 1.5})
    iht = bench.Row("iht", "70%", {"a": 0.2, "b": 0.2}, {"a": 0.25, "b": 0.125})
    rows = table_rows(bench.table([obs, admm, iht]))
    assert rows[2] == ["obs", "70%", "2", "2.500e-01", "4.000e-01", "1.500", "1.000", "1.000",
                       "1.00", "0", "", ""]  # no published ALPS row: no ratios to it
    # mean 0.075 / 0.25 = 0.3; per layer sqrt(0.5 * 0.25) = 0.354; 4.5 s / 1.5 s = 3
    assert rows[3] == ["admm", "70%", "2", "7.500e-02", "1.000e-01", "4.500", "0.300", "0.354",
                       "3.00", "0", "", ""]
    # layer a is worse than obs: 0.2 > 0.1; per layer sqrt(2 * 0.5) = 1
    assert rows[4] == ["iht", "70%", "2", "2.000e-01", "2.000e-01", "0.375", "0.800", "1.000",
                       "0.25", "1", "", ""]
    # against a published ALPS row: 0.075 / 0.25 = 0.3 in error, 4.5 s / 1.5 s = 3 in time
    alps = bench.Row(bench.PUBLISHED, "70%", obs.errors, obs.seconds)
    assert table_rows(bench.table([obs, admm, alps]))[3][-2:] == ["0.300", "3.00"]


def test_table_numbers(quick_report):
    rows = {(r[0], r[1]): r for r in table_rows(quick_report)[2:]}
    for (label, sparsity), r in rows.items():
        layers, mean, top, seconds, ratio, per_layer, time_ratio, worse = (
            int(r[2]), float(r[3]), float(r[4]), float(r[5]), float(r[6]), float(r[7]),
            float(r[8]), int(r[9]),
        )
        assert layers == 4  # 2 MLP layers (no head) + 2 synthetic, inputs divisible by 4
        assert 0 <= mean <= top and 0 <= worse <= layers
        ref = rows[("obs", sparsity)]
        assert ratio == pytest.approx(mean / float(ref[3]), rel=2e-3)
        if float(ref[5]) >= 0.05:  # the printed seconds (3 decimals) give the printed ratio
            expected = seconds / float(ref[5])  # each seconds cell is off by up to 0.0005
            slack = 0.005 + 0.0006 * (1 + expected) / float(ref[5])
            assert time_ratio == pytest.approx(expected, abs=slack)
        if label == "obs":
            assert (r[6], r[7], r[8], worse) == ("1.000", "1.000", "1.00", 0)
        if label == "magnitude":  # no weight update: far worse than OBS
            assert ratio > 2 and per_layer > 2
        if label == "obs+refit":  # optimal weights on OBS's support are never worse
            assert ratio <= 1 and per_layer <= 1 and worse == 0
        if worse == 0:  # no layer above OBS: the geometric mean of the ratios is at most 1
            assert per_layer <= 1.0005


def test_report_notes_the_command(quick_report):
    assert "# Solver benchmark" in quick_report
    assert "command: `l0prune bench solvers --quick --methods" in quick_report
    assert "1 CPU thread(s)" in quick_report


def test_run_skips_layers_a_budget_cannot_apply_to():
    layers = {"a": synthetic_layer(8, 8, seed=1), "b": synthetic_layer(8, 6, seed=2)}
    budgets = [("50%", Unstructured(sparsity=0.5)), ("2:4", NM(2, 4))]
    rows = bench.run(layers, [("obs", "obs", {})], budgets)
    assert [sorted(r.errors) for r in rows] == [["a", "b"], ["a"]]


def test_unknown_benchmark_or_method_exits(capsys):
    assert l0prune_main(["bench", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        bench.main(["--methods", "nope"])
    assert info.value.code == 2
    assert "argument --methods: invalid choice: 'nope'" in capsys.readouterr().err


def test_conv_layer_H_gives_the_output_change():
    """``tr(D H D^T)`` is the mean squared change of the conv output over all positions."""
    layers = digits_layers("cnn", samples=300, epochs=1)
    assert {name: tuple(W.shape) for name, (W, _) in layers.items()} == {
        "cnn.0": (16, 9), "cnn.2": (32, 144), "cnn.6": (64, 512)
    }
    W, H = layers["cnn.0"]
    images = load_digits_data(0).train.tensors[0][:300]
    D = torch.randn(W.shape, generator=torch.Generator().manual_seed(0))
    change = torch.nn.functional.conv2d(images, D.reshape(16, 1, 3, 3), padding=1)
    positions = images.shape[0] * 8 * 8
    expected = float((change**2).sum()) / positions
    assert float(((D @ H) * D).sum()) == pytest.approx(expected, rel=1e-4)


def test_mlp_input_layer_H_is_the_image_second_moment():
    layers = digits_layers("mlp", samples=100, epochs=1)
    X = load_digits_data(0).train.tensors[0][:100].reshape(100, 64)
    assert torch.allclose(layers["mlp.1"][1], X.T @ X / 100, atol=1e-6)
    with pytest.raises(ValueError, match="samples"):
        digits_layers("mlp", samples=0, epochs=1)


def test_synthetic_layer():
    W, H = synthetic_layer(12, 10, seed=3)
    assert W.shape == (12, 10) and H.shape == (10, 10) and H.dtype == torch.float32
    assert torch.equal(H, H.T)
    assert float(torch.linalg.eigvalsh(H.double())[0]) > 0  # 40 samples of 10 inputs
    W2, H2 = synthetic_layer(12, 10, seed=3)
    assert torch.equal(W, W2) and torch.equal(H, H2)
    assert not torch.equal(H, synthetic_layer(12, 10, seed=4)[1])
    bad = [({"out": 0, "inp": 3}, "out"), ({"out": 3, "inp": 2.5}, "inp"),
           ({"out": 3, "inp": 3, "outliers": 4}, "outliers")]
    for kwargs, name in bad:
        with pytest.raises(ValueError, match=name):
            synthetic_layer(**kwargs)


def test_the_scale_benchmark_problems_share_h_within_a_block_and_are_psd():
    from l0prune.bench.scale import BERT_SHAPES, problems, synthetic_H

    H = synthetic_H(48, seed=0, rank=16)
    e = torch.linalg.eigvalsh(H.double())
    assert torch.allclose(H, H.T) and float(e[0]) >= 0.01 - 1e-5  # PSD, ridge 0.01
    assert float(e[-1]) > 10 * float(e[-17])  # the spectrum decays
    batch = problems(6, sparsity=0.5)
    assert [p.shape for p in batch] == [*BERT_SHAPES, *BERT_SHAPES]
    assert torch.equal(batch[0].H, batch[1].H) and batch[1].H.shape == (384, 384)
    assert not torch.equal(batch[0].H, batch[3].H)  # the next block: other statistics


def test_plot_of_error_against_time(tmp_path):
    W, H = synthetic_layer(16, 8)
    layers = {"a": (W, H), "b": (W[:8], H)}
    variants = [v for v in bench.VARIANTS if v[0] in ("obs", "admm (fast)", bench.PUBLISHED)]
    rows = bench.run(layers, variants, [("50%", Unstructured(sparsity=0.5))])
    assert [r.label for r in rows] == ["obs", "admm (fast)", bench.PUBLISHED]
    table = bench.table(rows)
    assert table.splitlines()[-1].split("|")[-3:-1] == [" 1.000 ", " 1.00 "]  # ALPS vs itself
    bench.plot(layers, rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("schedule", ["fast", "default", "alps"])
def test_every_admm_setting_is_never_worse_than_obs_on_bench_layers(schedule):
    """Small versions of the benchmark's synthetic and BERT-class layers, every budget of the
    table: each ADMM setting's objective at most OBS's (as the table's last column claims)."""
    from l0prune.bench.layers import bert_layers
    from solvers import LayerProblem, solve

    layers = {"synthetic": synthetic_layer(96, 48, seed=3),
              **bert_layers(hidden=32, intermediate=64)}
    for _, budget in bench.BUDGETS:
        for W, H in layers.values():
            problem = LayerProblem(W, H, budget=budget)
            admm = solve(problem, "admm", schedule=schedule)
            assert admm.objective <= solve(problem, "obs").objective * (1 + 1e-6)
            assert int(admm.mask.sum()) == budget.kept(problem.shape)


def test_admm_settings_against_the_published_schedule():
    """The interleaved table: a setting equal to the published one is 1.000 on error; the
    phase table has one row per layer, sparsity and setting, its phases summing to the total."""
    from l0prune.bench import admm as admm_bench

    layers = {"a": synthetic_layer(24, 16, seed=1), "b": synthetic_layer(12, 16, seed=2)}
    settings = {"again": admm_bench.PUBLISHED, "fast": {"schedule": "fast"}}
    table = admm_bench.compare(layers, settings)
    rows = table_rows(table)[2:]
    assert [r[:2] for r in rows] == [[s, b] for s in ("again", "fast") for b, _ in bench.BUDGETS]
    assert all(r[2:5] == ["1.000", "1.000", "1.000"] for r in rows[:4])
    phases = table_rows(admm_bench.phases(layers, repeat=1))[2:]
    assert [r[2] for r in phases] == ["alps", "fast", "default"] * 4
    for r in phases:
        parts = [float(x) for x in r[4:9]]
        assert abs(sum(parts) - float(r[9])) <= 0.011 and min(parts) >= 0
    guard = table_rows(admm_bench.safeguard_table(layers))[2:]
    assert [r[0] for r in guard] == [b for b, _ in bench.BUDGETS]
    assert all(r[1] == "2" and r[4] == "yes" for r in guard)
