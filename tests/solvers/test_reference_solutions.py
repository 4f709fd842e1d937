"""``solve`` reproduces the stored reference solutions (``reference_cases.py``).

Masks must be equal; weights equal up to float32 round-off (a different BLAS or thread count may
sum in another order), which is far below any change of algorithm.
"""

import pytest
import torch

from solvers import LayerProblem, Unstructured, solve

from .reference_cases import CHANGED_ON_PURPOSE, METHODS, PATH, sequential_case, solutions

REFERENCE = torch.load(PATH)


def _same(weight, mask, ref_weight, ref_mask):
    assert torch.equal(mask, ref_mask)
    scale = float(ref_weight.abs().max()) or 1.0
    assert float((weight - ref_weight).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("method", METHODS + CHANGED_ON_PURPOSE, ids=lambda m: m[0])
def test_every_method_reproduces_its_reference(method):
    for key, (weight, mask) in solutions([method]).items():
        _same(weight, mask, *REFERENCE[key])


def test_the_sequential_problem_reproduces_its_reference():
    case, ref = sequential_case(), REFERENCE["sequential"]
    # the statistics as the sequential path now gives them: G = W C^T, ||X_0 W^T||^2 / N
    W = case["W"].double()
    G, energy = W @ case["C"].T, float(((W @ case["H0"]) * W).sum())
    problem = LayerProblem.from_moments(
        case["W"], case["H"], G, energy, budget=Unstructured(sparsity=0.6)
    )
    assert torch.allclose(problem.W, ref["target"], rtol=0, atol=1e-6)
    assert problem.lam == pytest.approx(float(ref["lam"]), rel=1e-12)
    solution = solve(problem, "obs")
    _same(solution.weight, solution.mask, ref["weight"], ref["mask"])
    errors = problem.output_error(solution.weight)
    # (from G = W C^T and the energy rather than C and X_0^T X_0: float64 rounding, ~1e-9)
    assert errors == pytest.approx(ref["errors"].tolist(), rel=1e-8)
