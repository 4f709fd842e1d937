"""SIGTERM, sent for real to a running ``l0prune prune``: the same clean-up as Ctrl-C, one line,
exit status 143, nothing left behind, whether it arrives while pruning or while writing. SIGKILL
while writing: what is left is removed by the next run on the same output."""

import os
import signal
import subprocess
import sys
import time

import pytest

SLOW_MODEL = '''
import glob
import time
from pathlib import Path

import torch
from torch import nn

class Slow(nn.Module):
    """Marks the phase it is in (a file ``pruning`` or ``writing``), then waits to be stopped."""

    def __init__(self, phase):
        super().__init__()
        self.layer, self.head = nn.Linear(4, 8), nn.Linear(8, 2)
        self.phase, self.calls = phase, 0

    def forward(self, x):
        self.calls += 1
        if self.phase == "pruning" and self.calls > 3:
            self._wait()
        return self.head(self.layer(x))

    def state_dict(self, *args, **kwargs):
        if self.phase == "writing" and glob.glob(".out.*"):  # inside the staging folder's life
            self._wait()
        return super().state_dict(*args, **kwargs)

    def _wait(self):
        Path(self.phase).write_text("")
        time.sleep(120)

def pruning():
    return Slow("pruning")

def writing():
    return Slow("writing")

def quick():
    return Slow("none")

data = [(torch.randn(16, 4), torch.randint(0, 2, (16,)))]
'''


def _prune(tmp_path, builder):
    return [sys.executable, "-m", "l0prune.cli", "prune", "--model", f"slow:{builder}",
            "--calibration", "slow:data", "--validation", "slow:data", "--sparsity", "0.5",
            "--baseline", "none", "--finetune-epochs", "0", "--out", "out", "--quiet"]


def _started(tmp_path, builder, phase):
    """``l0prune prune`` on ``slow:BUILDER``, once it waits in ``phase``."""
    (tmp_path / "slow.py").write_text(SLOW_MODEL)
    process = subprocess.Popen(
        _prune(tmp_path, builder), cwd=tmp_path,
        env=dict(os.environ, L0PRUNE_CACHE=str(tmp_path / "cache")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / phase).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the run never reached {phase}: {process.communicate()}")
        time.sleep(0.05)
    return process


@pytest.mark.parametrize("phase", ["pruning", "writing"])
def test_sigterm_cleans_up_and_exits_143(tmp_path, phase):
    process = _started(tmp_path, phase, phase)
    try:
        if phase == "writing":
            assert [p.name[:5] for p in tmp_path.glob(".out.*") if p.is_dir()] == [".out."]
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert err == "l0prune: terminated\n" and out == ""
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__")
    assert left == sorted([phase, "slow.py"]), left


def test_what_a_run_killed_while_writing_leaves_goes_with_the_next_run(tmp_path):
    process = _started(tmp_path, "writing", "writing")
    process.kill()
    process.communicate(timeout=60)
    left = sorted(p.name[:5] + ("/" if p.is_dir() else p.suffix) for p in tmp_path.glob(".out.*"))
    assert left == [".out..lock", ".out./"]  # the staging folder and its lock file
    (tmp_path / ".out.notes").mkdir()  # a name of the user's, not l0prune's staging
    done = subprocess.run(_prune(tmp_path, "quick"), cwd=tmp_path, capture_output=True,
                          text=True, env=dict(os.environ, L0PRUNE_CACHE=str(tmp_path / "cache")),
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        ".out.notes", "out", "slow.py", "writing"]
