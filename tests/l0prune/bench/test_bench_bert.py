"""The whole-prune benchmark's table: solver seconds and error ratios against the default."""

from l0prune.bench import bert


def test_table_ratios_are_against_the_default():
    records = [{label: (0.1 * (1 + i), 1.0) for i, label in enumerate(bert.SETTINGS)},
               {label: (0.2, 2.0) for label in bert.SETTINGS}]
    lines = bert.table(records, {"admm": 30.0, "obs": 10.0, "admm solver": 20.0,
                                 "obs solver": 1.0}).splitlines()
    assert lines[2] == "| admm (default) | 3.0 | 1.0000 / 1.0000 / 1.0000 |"
    assert lines[3] == "| admm (fast) | 3.0 | 1.0000 / 1.5000 / 2.0000 |"
    assert lines[-1] == "| admm / obs | 3.00 | |"


def test_the_side_by_side_method_keeps_the_default_result():
    import torch

    from solvers import LayerProblem, solve

    records = []
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(6, 8, generator=g), torch.randn(40, 8, generator=g)
    problem = LayerProblem.from_inputs(W, X, sparsity=0.5)
    weight, mask, info = bert.side_by_side(records)(problem)
    expected = solve(problem, "admm")
    assert torch.equal(weight, expected.weight) and torch.equal(mask, expected.mask)
    assert list(records[0]) == list(bert.SETTINGS)
    assert records[0]["obs"][0] >= records[0]["admm (default)"][0]
