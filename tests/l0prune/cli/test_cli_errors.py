"""Bad input through the command line: one clear line, a non-zero exit, no output left behind.

The cases the issue names run the console script in a subprocess; the many smaller ones call
:func:`l0prune.cli.main` in this process (the same code after the process boundary), to stay fast.
"""

import json

import pytest
import torch

from tests.l0prune.cli.conftest import (
    assert_nothing_written,
    assert_one_line_error,
    run_cli,
    run_main,
)


@pytest.mark.parametrize("args, words", [
    (["--sparsity", "1.5"], ["--sparsity must be a fraction in [0, 1), got 1.5"]),
    (["--sparsity", "0.5", "--alpha", "1.05"], ["give --sparsity or --alpha, not both"]),
    (["--model", "no_such_module:make", "--calibration", "x:y", "--validation", "x:y"],
     ["--model no_such_module:make", "cannot import no_such_module"]),
    (["--config", "missing.toml"], ["--config missing.toml", "no such file"]),
])
def test_bad_input_from_the_console_script(tmp_path, args, words):
    done = run_cli("prune", *args, "--out", "run", cwd=tmp_path)
    assert_one_line_error(done, *words)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("args, words", [
    (["--alpha", "0.9"], ["--alpha", ">= 1", "0.9"]),
    (["--model", "mynet.py:missing", "--calibration", "mynet:data", "--validation", "mynet:data"],
     ["--model mynet.py:missing", "no attribute 'missing'"]),
    (["--model", "mynet"], ["--model", "MODULE:NAME", "mynet"]),
    (["--calibration", "mynet:data"], ["--calibration needs --model"]),
    (["--method", "nosuch"], ["--method", "nosuch"]),
    (["--budget", "3:2"], ["--budget", "3:2"]),
    (["--finetune-epochs", "-1"], ["--finetune-epochs", "-1"]),
    (["--targets", "("], ["--targets", "not a valid regex"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
    (["--resume"], ["--resume continues a block-by-block run with a fixed budget", "alpha 1.02"]),
    (["--resume", "--sparsity", "0.5", "--no-blockwise"], ["--resume", "got --no-blockwise"]),
])
def test_bad_prune_input(tmp_path, capsys, monkeypatch, args, words):
    (tmp_path / "mynet.py").write_text("data = []\n")
    done = run_main("prune", *args, "--out", "run", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(done, *words)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("recipe, words", [
    ("sparsity = 1.5\n", ["sparsity in recipe.toml", "1.5"]),
    ("sparsity = 0.5\nalpha = 1.1\n", ["not both"]),
    ("speed = 3\n", ["unknown key 'speed'"]),
    ("sparsity = \n", ["not valid TOML"]),
    ("targets = 3\n", ["targets in recipe.toml", "regexes, 're:' regexes or class names"]),
])
def test_bad_recipe(tmp_path, capsys, monkeypatch, recipe, words):
    (tmp_path / "recipe.toml").write_text(recipe)
    done = run_main("prune", "--config", "recipe.toml", "--out", "run", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, *words)
    assert not (tmp_path / "run").exists()


def test_flags_override_the_recipe_before_anything_runs(tmp_path, capsys, monkeypatch):
    (tmp_path / "recipe.toml").write_text("alpha = 1.1\nbudget = \"per-row\"\n")
    done = run_main("prune", "--config", "recipe.toml", "--sparsity", "2", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, "--sparsity", "2")  # the flag is checked, alpha dropped


def test_a_folder_that_is_not_an_output_is_left_alone(tmp_path, capsys, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    done = run_main("prune", "--out", "mine", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(done, "--out mine", "not an l0prune output folder")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


FAILING_MODEL = '''
import torch
from torch import nn

class Fails(nn.Module):
    """Runs for the first batches, then fails: the run has started when it breaks."""

    def __init__(self, interrupt):
        super().__init__()
        self.layer, self.head = nn.Linear(4, 8), nn.Linear(8, 2)
        self.calls, self.interrupt = 0, interrupt

    def forward(self, x):
        self.calls += 1
        if self.calls > 3:
            if self.interrupt:  # what Ctrl-C raises (a raw SIGINT may be ignored under CI)
                raise KeyboardInterrupt
            raise RuntimeError("shapes do not match\\nsecond line")
        return self.head(self.layer(x))

def broken():
    return Fails(False)

def interrupted():
    return Fails(True)

data = [(torch.randn(16, 4), torch.randint(0, 2, (16,)))]
'''


@pytest.mark.parametrize("factory, status, message", [
    ("broken", 1, "l0prune: error: RuntimeError: shapes do not match (--traceback shows where)"),
    ("interrupted", 130, "l0prune: interrupted"),
])
def test_a_failed_run_leaves_no_output(tmp_path, factory, status, message):
    (tmp_path / "mynet.py").write_text(FAILING_MODEL)
    done = run_cli("prune", "--model", f"mynet:{factory}", "--calibration", "mynet:data",
                   "--validation", "mynet:data", "--sparsity", 0.5, "--baseline", "none",
                   "--out", "run", "--quiet", cwd=tmp_path)
    assert done.returncode == status
    assert done.stderr.strip() == message
    assert_nothing_written(tmp_path)


def test_traceback_flag_shows_the_traceback(tmp_path):
    (tmp_path / "mynet.py").write_text(FAILING_MODEL)
    done = run_cli("prune", "--model", "mynet:broken", "--calibration", "mynet:data",
                   "--validation", "mynet:data", "--sparsity", 0.5, "--traceback", "--quiet",
                   cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" in done.stderr


@pytest.mark.parametrize("args, words", [
    (["missing.pt", "--sparsity", "0.5"], ["W missing.pt", "no such file"]),
    (["W.pt", "--sparsity", "1.5"], ["--sparsity", "1.5"]),
    (["W.pt"], ["needs --sparsity"]),
    (["W.pt", "--budget", "2:4", "--sparsity", "0.5"], ["fixes the sparsity"]),
    (["W.pt", "--sparsity", "0.5", "--hessian", "H.pt", "--inputs", "H.pt"], ["not allowed"]),
    (["W.pt", "--sparsity", "0.5", "--out", "W.txt"], ["--out W.txt", ".npy"]),
    (["W.pt", "--sparsity", "0.5", "--hessian", "H5.pt"], ["H must be 4 x 4"]),
    (["W.pt:weight", "--sparsity", "0.5"], ["drop :weight"]),
    (["notes.npy", "--sparsity", "0.5"], ["cannot read"]),
    (["W.pt", "--sparsity", "0.5", "--certify", "--bound", "best"], ["--bound", "best"]),
])
def test_bad_solve_input(tmp_path, capsys, monkeypatch, args, words):
    torch.save(torch.randn(3, 4), tmp_path / "W.pt")
    torch.save(torch.eye(4), tmp_path / "H.pt")
    torch.save(torch.eye(5), tmp_path / "H5.pt")
    (tmp_path / "notes.npy").write_text("not an array")
    done = run_main("solve", *args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, *words)


@pytest.mark.parametrize("args, words", [
    (["W.pt", "--sparsity", "0.5", "--method", "exact"],
     ["--method exact", "128 binary variables, over --max-binaries 40",
      "--method admm --certify"]),
    (["W.pt", "--budget", "per-row", "--sparsity", "0.5", "--method", "exact",
      "--max-binaries", "8"], ["16 binary variables, over --max-binaries 8"]),
    (["W.pt", "--sparsity", "0.5", "--time-limit", "5"],
     ["--time-limit applies to --method exact only, got --method admm"]),
    (["W.pt", "--sparsity", "0.5", "--method", "exact", "--time-limit", "0"],
     ["--time-limit must be a positive number, got 0"]),
    (["W100.pt", "--sparsity", "0.5", "--method", "magnitude", "--certify", "--bound",
      "perspective"], ["--bound perspective takes layers of at most 4096 weights, got 100 x 100",
                       "use --bound lagrangian"]),
    (["W300.pt", "--sparsity", "0.5", "--method", "magnitude", "--certify", "--bound", "sdp"],
     ["--bound sdp takes layers of at most 256 inputs", "use --bound lagrangian"]),
])
def test_solve_errors_name_the_flags_not_the_python_api(tmp_path, capsys, monkeypatch, args,
                                                        words):
    torch.save(torch.randn(8, 16), tmp_path / "W.pt")
    torch.save(torch.randn(100, 100), tmp_path / "W100.pt")
    torch.save(torch.randn(2, 300), tmp_path / "W300.pt")
    done = run_main("solve", *args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, *words)
    assert "method=" not in done.stderr and "solve(" not in done.stderr


def test_exact_with_its_flags_solves_a_small_layer(tmp_path, capsys, monkeypatch):
    torch.save(torch.randn(2, 8, generator=torch.Generator().manual_seed(0)), tmp_path / "W.pt")
    done = run_main("solve", "W.pt", "--budget", "per-row", "--sparsity", "0.5", "--method",
                    "exact", "--time-limit", "60", "--max-binaries", "8", "--json", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    # H = I: the optimum keeps each row's 4 largest |w|, so the error is the rest's share.
    W = torch.load(tmp_path / "W.pt")
    dropped = W.abs().sort(dim=1).values[:, :4]
    assert figures["relative_error"] == pytest.approx(float((dropped ** 2).sum() / (W ** 2).sum()),
                                                      rel=1e-6)
    assert figures["converged"] is True and figures["kept"] == 8


def test_prune_with_exact_on_a_large_layer_names_the_flags(tmp_path, capsys, monkeypatch):
    from tests.l0prune.cli.conftest import USER_MODEL

    (tmp_path / "exactnet.py").write_text(USER_MODEL)  # a name no other test imports
    done = run_main("prune", "--model", "exactnet:build", "--calibration", "exactnet:calibration",
                    "--validation", "exactnet:validation", "--sparsity", "0.5", "--method", "exact",
                    "--baseline", "none", "--finetune-epochs", "0", "--out", "run", "--quiet",
                    cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, "--method exact: a layer's program has 384 binary variables",
                          "--method admm")
    assert "method=" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        "exactnet.py"]


@pytest.mark.parametrize("args, words", [
    (["bogus"], ["bench: unknown benchmark 'bogus'; choose solvers, models, certify, checkpoints"]),
    (["solvers", "--bogus"], ["bench solvers: unrecognized arguments: --bogus"]),
    (["certify", "--time-limit", "0"], ["bench certify: --time-limit must be a positive"]),
])
def test_bench_errors_are_one_line(tmp_path, capsys, monkeypatch, args, words):
    done = run_main("bench", *args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, *words)


def test_bench_certify_is_reachable(tmp_path, capsys, monkeypatch):
    done = run_main("bench", "certify", "--help", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert done.returncode == 0 and "--time-limit" in done.stdout


SIX_INPUTS = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 2))

data = [(torch.randn(32, 6), torch.randint(0, 2, (32,)))]
'''


def test_an_nm_budget_that_does_not_fit_suggests_ignore_and_skip(tmp_path, capsys, monkeypatch):
    (tmp_path / "sixnet.py").write_text(SIX_INPUTS)
    args = ["prune", "--model", "sixnet:build", "--calibration", "sixnet:data", "--validation",
            "sixnet:data", "--budget", "2:4", "--baseline", "none", "--finetune-epochs", "0",
            "--out", "run", "--quiet"]
    done = run_main(*args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, "--budget 2:4 does not fit layer 0 (weight 16x6)",
                          "--ignore 0", "--skip-incompatible")
    assert "NM(" not in done.stderr
    done = run_main(*args, "--skip-incompatible", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert done.returncode == 0
    assert done.stderr == ("l0prune: warning: layer '0' left dense: N:M budget 2:4 needs the "
                           "input size divisible by m=4, got W with 6 inputs\n")
    report = json.loads((tmp_path / "run" / "report.json").read_text())["runs"][0]["report"]
    assert list(report["skipped"]) == ["0"] and [x["name"] for x in report["layers"]] == ["2"]
