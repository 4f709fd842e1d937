"""IHT reads the device once per ``check_every`` trial steps, not in every iteration.

Every way a tensor's value reaches Python (``item``, ``tolist``, ``bool``, ``float``, ``int``,
``index``) is counted when ``solvers/iht.py`` itself asks for it. On a GPU each such read waits for
the device; reads made elsewhere on IHT's behalf (the refit's CG, the final safeguard, the
budgets' CPU-only selection shortcuts) happen at most once per refit or not on a GPU at all.
"""

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

from solvers import LayerProblem, Unstructured, solve

IHT_FILE = importlib.import_module("solvers.iht").__file__
TORCH_DIR = str(Path(torch.__file__).resolve().parent)
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def reads_by_iht(monkeypatch):
    """A counter of the host reads whose nearest caller outside torch is ``solvers/iht.py``."""
    count = [0]

    def counting(original):
        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH_DIR):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename == IHT_FILE:
                count[0] += 1
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    return count


@pytest.mark.parametrize("check_every", [1, 10, 25])
def test_one_read_per_check(layer, reads_by_iht, check_every):
    W, H = layer
    problem = LayerProblem(W, H, budget=Unstructured(sparsity=0.7))
    solution = solve(problem, "iht", max_iter=100, warmup=20, check_every=check_every)
    info = solution.info
    assert info["iterations"] >= 40  # long enough that per-iteration reads would show
    # the start's f, one read per check (every check_every steps and the last), one per refit
    checks = math.ceil(info["iterations"] / check_every)
    assert reads_by_iht[0] == 1 + checks + info["refits"]
