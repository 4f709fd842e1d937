"""``l0prune solve`` on layer problems from files, and ``l0prune bench`` handing over to the
benchmarks."""

import json

import numpy as np
import pytest
import torch

from l0prune.cli.bench_cmd import BENCHMARKS
from solvers import LayerProblem, solve
from tests.l0prune.cli.conftest import run_cli, run_main


@pytest.fixture
def layer(tmp_path):
    """A 24 x 32 weight and 256 correlated input rows, saved as W.pt and X.npy."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(24, 32, generator=g)
    X = torch.randn(256, 32, generator=g) @ torch.randn(32, 32, generator=g)
    torch.save(W, tmp_path / "W.pt")
    np.save(tmp_path / "X.npy", X.numpy())
    return W, X


def test_solve_from_files_prints_figures_and_writes_the_weight(tmp_path, layer):
    W, X = layer
    done = run_cli("solve", "W.pt", "--inputs", "X.npy", "--sparsity", 0.7, "--method", "admm",
                   "--out", "W_sparse.pt", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    pruned = torch.load(tmp_path / "W_sparse.pt", weights_only=True)
    expected = solve(LayerProblem.from_inputs(W, X, sparsity=0.7), "admm")
    assert torch.allclose(pruned, expected.weight, atol=1e-6)
    assert figures["kept"] == int((pruned != 0).sum()) == round(0.3 * W.numel())
    assert figures["relative_error"] == pytest.approx(expected.relative_error, rel=1e-5)
    assert figures["method"] == "admm" and figures["shape"] == [24, 32]


def test_state_dict_key_safetensors_and_n_m(tmp_path, capsys, monkeypatch, layer):
    from safetensors.torch import save_file

    W, X = layer
    torch.save({"fc.weight": W, "fc.bias": torch.zeros(24)}, tmp_path / "model.pt")
    save_file({"H": X.T @ X / len(X), "other": torch.ones(2)}, tmp_path / "H.safetensors")
    done = run_main("solve", "model.pt:fc.weight", "--hessian", "H.safetensors:H", "--budget",
                    "2:4", "--method", "obs", "--out", "W.npy", "--json", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    pruned = np.load(tmp_path / "W.npy")
    assert ((pruned.reshape(24, 8, 4) != 0).sum(axis=-1) == 2).all()
    assert json.loads(done.stdout)["sparsity"] == 0.5


def test_convolution_weight_keeps_its_shape(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    torch.save(torch.randn(8, 3, 3, 3), tmp_path / "conv.pt")
    done = run_main("solve", "conv.pt", "--sparsity", 0.5, "--budget", "structured",
                    "--method", "magnitude", "--out", "conv.safetensors", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    assert "relative error" in done.stdout and "kept" in done.stdout
    pruned = load_file(tmp_path / "conv.safetensors")["weight"]
    assert pruned.shape == (8, 3, 3, 3)
    columns = (pruned.reshape(8, 27) != 0).any(dim=0)
    assert int(columns.sum()) in (13, 14)  # whole input columns kept: half of 27


@pytest.mark.parametrize("bound", ["separable", "lagrangian"])
def test_certify_reports_a_bound_and_gap(tmp_path, capsys, monkeypatch, layer, bound):
    done = run_main("solve", "W.pt", "--inputs", "X.npy", "--sparsity", 0.5, "--certify",
                    "--bound", bound, "--json", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert 0 < figures["lower_bound"] <= figures["objective"]
    assert figures["gap"] == pytest.approx(
        (figures["objective"] - figures["lower_bound"]) / figures["objective"], rel=1e-4
    )


def test_bench_hands_options_to_the_benchmark(tmp_path, capsys, monkeypatch):
    done = run_main("bench", "solvers", "--quick", "--methods", "magnitude", "--out",
                    tmp_path / "solvers.md", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0
    table = (tmp_path / "solvers.md").read_text()
    assert "| magnitude |" in table and table.strip() in done.stdout


def test_bench_help_and_bad_use(tmp_path, capsys, monkeypatch):
    done = run_main("bench", "--help", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0
    names = "|".join(BENCHMARKS)
    assert f"l0prune bench [{names}]" in done.stdout
    assert all(name in names for name in ("scale", "lm", "llmcompressor", "bert", "gpu"))
    done = run_main("bench", "--out", "x.md", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert done.returncode == 2 and "give a benchmark name" in done.stderr


def test_a_bfloat16_weight_is_refused_an_npy_out_before_solving(tmp_path, capsys, monkeypatch):
    from tests.l0prune.cli.conftest import assert_one_line_error

    torch.save(torch.randn(8, 16).to(torch.bfloat16), tmp_path / "W_bf16.pt")

    def no_solve(*args, **kwargs):
        raise AssertionError("solved before the output was checked")

    monkeypatch.setattr("l0prune.cli.solve_run.solve", no_solve)
    done = run_main("solve", "W_bf16.pt", "--sparsity", 0.5, "--method", "magnitude", "--out",
                    "o.npy", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, "--out o.npy: numpy (.npy) has no bfloat16")
    assert not (tmp_path / "o.npy").exists()


def test_a_full_disk_under_solve_out_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch,
                                                                 layer):
    import errno

    from tests.l0prune.cli.conftest import assert_one_line_error

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    done = run_main("solve", "W.pt", "--sparsity", 0.5, "--method", "magnitude", "--out",
                    "W_sparse.npy", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, "cannot write W_sparse.npy: No space left on device (disk full?)",
                          status=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["W.pt", "X.npy"]
