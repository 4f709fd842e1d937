"""Budgets: exact counts for every family, deterministic ties, projections, bad input."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from solvers import NM, PerRow, Structured, Unstructured
from solvers.budgets import Layout, top_k_mask


@st.composite
def weight_and_budget(draw):
    out = draw(st.integers(1, 6))
    groups = draw(st.integers(1, 4))
    m = draw(st.sampled_from([1, 2, 4]))
    inp = groups * m
    # Few distinct values, so ties are common.
    values = draw(st.lists(st.integers(-3, 3), min_size=out * inp, max_size=out * inp))
    W = torch.tensor(values, dtype=torch.float32).reshape(out, inp)
    kind = draw(st.sampled_from(["unstructured", "per_row", "nm", "structured"]))
    if kind == "unstructured":
        budget = Unstructured(k=draw(st.integers(0, out * inp)))
    elif kind == "per_row":
        budget = PerRow(k=draw(st.integers(0, inp)))
    elif kind == "nm":
        budget = NM(draw(st.integers(0, m)), m)
    else:
        budget = Structured(k=draw(st.integers(0, groups)), group=m)
    return W, budget


@settings(max_examples=300, deadline=None)
@given(weight_and_budget())
def test_select_meets_budget_exactly(case):
    W, budget = case
    mask = budget.select(W * W)
    assert mask.dtype == torch.bool and mask.shape == W.shape
    assert int(mask.sum()) == budget.kept(tuple(W.shape))
    out, inp = W.shape
    if isinstance(budget, PerRow):
        assert (mask.sum(dim=1) == budget.k).all()
    if isinstance(budget, NM):
        assert (mask.reshape(out, -1, budget.m).sum(dim=-1) == budget.n).all()
    if isinstance(budget, Structured):
        cols = mask.reshape(out, -1, budget.group)
        assert (cols.all(dim=(0, 2)) | ~cols.any(dim=(0, 2))).all()
    assert torch.equal(mask, budget.select(W * W))  # deterministic


@settings(max_examples=200, deadline=None)
@given(weight_and_budget())
def test_select_maximises_the_score(case):
    """No feasible swap improves the kept score: the selection is the best support."""
    W, budget = case
    score = W * W
    mask = budget.select(score)
    if isinstance(budget, Unstructured) and 0 < mask.sum() < mask.numel():
        assert score[mask].min() >= score[~mask].max()
    if isinstance(budget, PerRow):
        for row, keep in zip(score, mask, strict=True):
            if 0 < keep.sum() < keep.numel():
                assert row[keep].min() >= row[~keep].max()


def test_ties_go_to_the_lowest_index():
    mask = top_k_mask(torch.ones(1, 6), 3)
    assert mask.tolist() == [[True, True, True, False, False, False]]


def test_projection_is_the_nearest_feasible_point():
    W = torch.tensor([[3.0, -1.0, 0.5, -4.0], [0.1, 0.2, -0.3, 2.0]])
    expected = torch.tensor([[3.0, 0.0, 0.0, -4.0], [0.0, 0.0, 0.0, 2.0]])
    assert torch.equal(Unstructured(k=3).project(W), expected)
    expected[1, 1] = 0.2
    assert torch.equal(NM(1, 2).project(W), expected)


def test_structured_groups_whole_channels():
    W = torch.tensor([[1.0, 1.0, 5.0, 0.0, 2.0, 2.0]])
    mask = Structured(k=1, group=2).select(W * W)
    assert mask.tolist() == [[False, False, True, True, False, False]]


def test_sparsity_and_counts():
    assert Unstructured(sparsity=0.7).kept((10, 10)) == 30
    assert PerRow(sparsity=0.5).kept((4, 10)) == 20
    assert NM(2, 4).kept((3, 8)) == 12
    assert Structured(sparsity=0.5, group=3).kept((2, 12)) == 12
    assert Unstructured(sparsity=0.7).with_count(5).kept((10, 10)) == 5
    assert NM(2, 4).with_count(1) == NM(1, 4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Unstructured(sparsity=1.0), "sparsity"),
        (lambda: Unstructured(sparsity=-0.1), "sparsity"),
        (lambda: Unstructured(sparsity=float("nan")), "sparsity"),
        (lambda: Unstructured(sparsity=0.5, k=3), "not both"),
        (lambda: PerRow(k=-1), "k must"),
        (lambda: NM(3, 2), "n <= m"),
        (lambda: NM(2, 0), "m must"),
        (lambda: Structured(k=1, group=0), "group"),
    ],
)
def test_bad_budgets(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_budget_that_does_not_fit_the_shape():
    with pytest.raises(ValueError, match="divisible by m=4"):
        NM(2, 4).check((3, 6))
    with pytest.raises(ValueError, match="exceeds"):
        Unstructured(k=100).check((3, 6))
    with pytest.raises(ValueError, match="divisible by the group"):
        Structured(k=1, group=4).check((3, 6))


@pytest.mark.parametrize(
    ("budget", "layout"),
    [(Unstructured(k=5), Layout(None, 24, 5)), (PerRow(k=2), Layout(None, 8, 2)),
     (NM(1, 4), Layout(None, 4, 1)), (Structured(k=1, group=2), Layout(2, 4, 1))],
    ids=repr,
)
def test_a_budget_describes_its_counting_sets(budget, layout):
    assert budget.layout((3, 8)) == layout
    # The layout is the budget: a random selection fills every set to exactly its count.
    mask = budget.select(torch.rand(3, 8, generator=torch.Generator().manual_seed(0)))
    gates = mask if layout.group is None else mask[0].reshape(-1, layout.group)[:, 0]
    assert (gates.reshape(-1, layout.set_size).sum(dim=1) == layout.count).all()


def test_feature_width_widens_only_column_groups():
    assert Structured(k=1, group=2).with_feature_width(9) == Structured(k=1, group=18)
    for budget in (Unstructured(k=5), PerRow(k=2), NM(2, 4)):
        assert budget.with_feature_width(9) is budget


@given(st.sampled_from(["unstructured", "per-row", "structured"]),
       st.one_of(st.none(), st.integers(0, 50)), st.integers(1, 9), st.booleans())
def test_a_budget_reads_back_its_text_and_its_json(name, k, group, structured_group):
    from solvers import Budget, parse_budget

    budget = parse_budget(name)
    if k is not None:
        budget = budget.with_count(k)
    if name == "structured" and structured_group:
        budget = Structured(k=k, group=group)
    assert parse_budget(budget.text) == budget
    assert Budget.from_json(budget.to_json()) == budget
    assert str(budget) == budget.text


@pytest.mark.parametrize(("text", "budget"), [
    ("2:4", NM(2, 4)), (" 1 : 8 ", NM(1, 8)), ("Unstructured", Unstructured()),
    ("per-row(k=3)", PerRow(k=3)), ("structured(group=9, sparsity=0.5)",
                                     Structured(sparsity=0.5, group=9)),
])
def test_the_text_forms_users_write(text, budget):
    from solvers import parse_budget

    assert parse_budget(text) == budget


@pytest.mark.parametrize(("text", "message"), [
    ("3:2", "N:M needs 0 < N <= M"), ("blocks", "budget must be unstructured, per-row"),
    ("per-row(group=2)", "per-row takes sparsity=, k="), ("unstructured(k=x)", "k must be a "
                                                           "number"), (4, "budget must be text"),
])
def test_text_that_is_no_budget_is_refused_naming_the_forms(text, message):
    from solvers import parse_budget

    with pytest.raises(ValueError, match=message):
        parse_budget(text)


def test_json_of_older_problem_folders_and_bad_json():
    from solvers import Budget

    assert Budget.from_json({"type": "Unstructured", "sparsity": None, "k": 10}) == \
        Unstructured(k=10)
    assert Budget.from_json({"type": "NM", "n": 1, "m": 4}) == NM(1, 4)
    with pytest.raises(ValueError, match="unknown budget type 'Evil'"):
        Budget.from_json({"type": "Evil"})
    with pytest.raises(ValueError, match="has no field"):
        Budget.from_json({"type": "per-row", "group": 3})


def test_one_rounding_rule_from_a_sparsity_to_a_count():
    from solvers import kept_at

    assert [kept_at(10, s) for s in (0.0, 0.25, 0.75, 0.99)] == [10, 8, 2, 0]
    assert Unstructured(sparsity=0.25).count((2, 5)) == kept_at(10, 0.25)
    assert PerRow().at((3, 8), 0.5) == PerRow(k=4)
    assert Structured().at((2, 8), 0.99, least=1) == Structured(k=1)
