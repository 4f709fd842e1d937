"""Fixed-seed layer problems and the solutions every method gave on them, stored as references.

The engine's tidying (cached scaled problems, budgets that describe their own structure, the
method registry) must leave every solution as it was; ``test_reference_solutions.py`` solves
these cases again and compares them with ``data/reference_solutions.pt``. A deliberate change of
a method's output regenerates the file (``python -m tests.solvers.reference_cases``) and says so
in its commit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from solvers import NM, LayerProblem, PerRow, Structured, Unstructured, solve

from ..conftest import correlated_inputs

PATH = Path(__file__).parent / "data" / "reference_solutions.pt"

#: ``(label, method, options)``; every one runs on every problem and budget below.
METHODS = [
    ("magnitude", "magnitude", {}),
    ("magnitude+refit", "magnitude", {"refit": True}),
    ("wanda", "wanda", {}),
    ("obs", "obs", {}),
    ("obs+refit", "obs", {"refit": True}),
    ("admm-alps", "admm", {"schedule": "alps", "swap_rounds": 0}),
    ("hard_concrete", "hard_concrete", {"steps": 200}),
]

#: methods whose output is allowed to change on purpose (regenerated when they do).
CHANGED_ON_PURPOSE = [("admm", "admm", {}), ("iht", "iht", {"max_iter": 150})]

BUDGETS = [
    ("50%", Unstructured(sparsity=0.5)),
    ("80%", Unstructured(sparsity=0.8)),
    ("per-row 60%", PerRow(sparsity=0.6)),
    ("2:4", NM(2, 4)),
    ("structured", Structured(sparsity=0.5, group=2)),
]


def problems() -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """``name -> (W, H)``: three correlated float32 layers (one with more outputs than inputs)
    and one plain (``H = I``) layer."""
    out = {}
    sizes = {"16x24": (16, 24, 0), "12x32": (12, 32, 1), "40x16": (40, 16, 2)}
    for name, (rows, cols, seed) in sizes.items():
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
        X = correlated_inputs(4 * cols, cols, seed=seed + 10)
        out[name] = (W.float(), (X.T @ X / X.shape[0]).float())
    out["8x16 plain"] = (torch.randn(8, 16, generator=torch.Generator().manual_seed(5)), None)
    return out


def solutions(methods=METHODS) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``"problem | budget | method" -> (weight, mask)`` for every case."""
    out = {}
    for pname, (W, H) in problems().items():
        for bname, budget in BUDGETS:
            for label, method, options in methods:
                solution = solve(LayerProblem(W, H, budget=budget), method, **options)
                out[f"{pname} | {bname} | {label}"] = (solution.weight, solution.mask)
    return out


def sequential_case() -> dict[str, torch.Tensor]:
    """Paired statistics of a layer whose inputs drifted: ``W``, ``H``, ``C``, ``H0``."""
    g = torch.Generator().manual_seed(7)
    X0 = correlated_inputs(96, 24, seed=8)
    X = X0 + 0.2 * torch.randn(96, 24, generator=g, dtype=torch.float64)
    W = torch.randn(16, 24, generator=g, dtype=torch.float64).float()
    n = X.shape[0]
    return {"W": W, "H": X.T @ X / n, "C": X.T @ X0 / n, "H0": X0.T @ X0 / n}


if __name__ == "__main__":
    torch.set_num_threads(1)
    PATH.parent.mkdir(parents=True, exist_ok=True)
    references = solutions(METHODS + CHANGED_ON_PURPOSE)
    if PATH.exists():  # taken once with the code before the sequential math moved into solvers
        references["sequential"] = torch.load(PATH)["sequential"]
    torch.save(references, PATH)
    print(f"wrote {PATH}")
