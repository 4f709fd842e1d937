"""What the command line's tests share: running ``l0prune`` here or as a process, reading its
one-line errors, and a small model of a user's own to run it on."""

import os
import subprocess
import sys

from l0prune.cli import main


def run_cli(*args, cwd, cache=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m l0prune.cli ARGS`` in ``cwd``; the built-in model is cached in ``cache``."""
    env = dict(os.environ, L0PRUNE_CACHE=str(cache or cwd / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "l0prune.cli", *map(str, args)], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


def run_main(*args, cwd, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """:func:`main` on ``args`` in ``cwd``, as a finished process."""
    monkeypatch.chdir(cwd)
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out, err)


def assert_one_line_error(done, *words, status=2):
    assert done.returncode == status, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("l0prune: error: ") and "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0]
    assert done.stdout == ""


def assert_nothing_written(cwd):
    inputs = {"cache", "mynet.py", "__pycache__"}
    assert sorted(p.name for p in cwd.iterdir() if p.name not in inputs) == []


USER_MODEL = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 3))

_g = torch.Generator().manual_seed(1)
_x = torch.randn(96, 12, generator=_g)
_y = (_x[:, 0] > 0).long() + (_x[:, 1] > 0).long()
calibration = [(_x[i:i + 32], _y[i:i + 32]) for i in range(0, 64, 32)]

def validation():
    return [(_x[64:], _y[64:])]

def half_mse(outputs, batch):
    return 0.5 * ((outputs - nn.functional.one_hot(batch[1], 3)) ** 2).mean()
'''
