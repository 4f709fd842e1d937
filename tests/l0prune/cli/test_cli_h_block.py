"""``--h-block`` from the shell, and a run whose statistics cannot fit refused in one line."""

import json

from tests.l0prune.cli.conftest import (
    USER_MODEL,
    assert_nothing_written,
    assert_one_line_error,
    run_main,
)

WIDE_MODEL = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1 << 20, 2), nn.ReLU(), nn.Linear(2, 3))

calibration = [(torch.ones(2, 1 << 20), torch.zeros(2, dtype=torch.long))]
'''

USER = ["--model", "mynet.py:build", "--calibration", "mynet:calibration", "--validation",
        "mynet:calibration", "--sparsity", "0.5", "--finetune-epochs", "0", "--threads", "1"]


def test_h_block_reaches_the_run_and_its_recipe(tmp_path, capsys, monkeypatch):
    (tmp_path / "mynet.py").write_text(USER_MODEL)
    done = run_main("prune", *USER, "--method", "obs", "--targets", "0", "2", "--h-block", "8",
                    "--out", "out", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["runs"][0]["report"]["config"]["h_block"] == 8
    assert "h-block = 8" in (tmp_path / "out" / "recipe.toml").read_text()


def test_bad_h_block_values_are_one_line(tmp_path, capsys, monkeypatch):
    for args, words in (
        (["--h-block", "0"], ["--h-block", "0"]),
        (["--h-block", "64", "--no-sequential", "--save-problems", "p"],
         ["--save-problems", "does not take --h-block"]),
    ):
        done = run_main("prune", "--sparsity", "0.5", *args, "--out", "run", cwd=tmp_path,
                        capsys=capsys, monkeypatch=monkeypatch)
        assert_one_line_error(done, *words)
        assert_nothing_written(tmp_path)


def test_a_layer_whose_statistics_cannot_fit_is_one_line_before_any_work(tmp_path, capsys,
                                                                         monkeypatch):
    (tmp_path / "mynet.py").write_text(WIDE_MODEL)
    done = run_main("prune", *USER, "--method", "admm", "--out", "out", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    *stages, error = done.stderr.strip().splitlines()
    assert stages == ["pruning with admm"]  # no stage after the choice of the targets
    assert error.startswith("l0prune: error: layer '0' needs about ")
    for word in ("a float64 H of 1,048,576 x 1,048,576", "--ignore 0", "magnitude", "--h-block"):
        assert word in error
    assert_nothing_written(tmp_path)
