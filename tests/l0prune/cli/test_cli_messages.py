"""The command line's messages are ``logging`` records of the ``l0prune`` logger shown on
stderr; dask's own below warnings stay off the console; a fixed sparsity needs no validation."""

import json
import logging
import os
import subprocess
import sys

import pytest

from l0prune.cli import showing_messages
from tests.l0prune.cli.conftest import USER_MODEL, assert_one_line_error, run_main

RUN = ("prune", "--model", "messages_net:build", "--calibration", "messages_net:calibration",
       "--method", "obs", "--baseline", "none", "--out", "run")


@pytest.fixture
def user(tmp_path):
    (tmp_path / "messages_net.py").write_text(USER_MODEL)  # a name no other test imports
    return tmp_path


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_messages_are_log_records_shown_one_line_each(user, capsys, monkeypatch):
    records = _Records()
    logging.getLogger("l0prune").addHandler(records)
    try:
        done = run_main(*RUN, "--sparsity", "0.5", cwd=user, capsys=capsys,
                        monkeypatch=monkeypatch)
    finally:
        logging.getLogger("l0prune").removeHandler(records)
    assert done.returncode == 0, done.stderr
    assert [(r.name, r.getMessage()) for r in records.records] == [("l0prune.cli",
                                                                    "pruning with obs")]
    assert "pruning with obs\n" in done.stderr
    assert not logging.getLogger("l0prune").handlers  # the command's handler is gone after it


def test_quiet_keeps_warnings(capsys):
    with showing_messages(quiet=True):
        logging.getLogger("l0prune.cli").info("step")
        logging.getLogger("l0prune.targets").warning("careful")
    with showing_messages(quiet=False):
        logging.getLogger("l0prune.cli").info("step")
    assert capsys.readouterr().err == "l0prune: warning: careful\nstep\n"


def test_dask_logs_below_warnings_stay_off_the_console(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.delenv("DASK_LOGGING__DISTRIBUTED", raising=False)
    with showing_messages(quiet=False):
        env = dict(os.environ)
    level = subprocess.run(
        [sys.executable, "-c", "import logging, distributed; "
         "print(logging.getLogger('distributed').getEffectiveLevel())"],
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert level == str(logging.WARNING)


def test_a_fixed_sparsity_needs_no_validation(user, capsys, monkeypatch):
    done = run_main(*RUN, "--sparsity", "0.5", cwd=user, capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    data = json.loads((user / "run" / "report.json").read_text())
    assert data["runs"][0]["report"]["dense_loss"] is None
    assert data["runs"][0]["report"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "| validation loss | - | - |" in (user / "run" / "report.md").read_text()
    assert (user / "run" / "sparsity_vs_loss.png").stat().st_size > 0


def test_alpha_still_needs_validation_and_says_text_works_for_hf(user, capsys, monkeypatch):
    done = run_main(*RUN, "--alpha", "1.05", cwd=user, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, "--model needs --validation (MODULE:NAME of batches)",
                          "at a fixed --sparsity it may be left out")
    done = run_main("prune", "--model", "hf:some/model", "--calibration", "text:x.txt",
                    "--out", "run", cwd=user, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, "--model needs --validation (MODULE:NAME of batches or "
                                "text:PATH)")
