"""Budgets as gate sets: the gate constraints hold exactly the budget's supports."""

import itertools

import pytest
import torch

from solvers import NM, PerRow, Structured, Unstructured
from solvers.cardinality import Cardinality

BUDGETS = [Unstructured(k=5), PerRow(k=2), NM(1, 2), Structured(k=2, group=2), Structured(k=1)]


def feasible(card: Cardinality, mask: torch.Tensor) -> bool:
    """Whether some gates within the counts open exactly ``mask``."""
    gates = card.pool(mask.double())
    if card.group is not None:  # a shared gate: every weight of the atom or none
        size = card.shape[0] * card.group
        if not bool(((gates == 0) | (gates == size)).all()):
            return False
        gates = gates / size
    return bool((gates.sum(dim=1) <= card.count).all())


def by_definition(budget, mask: torch.Tensor) -> bool:
    if isinstance(budget, Unstructured):
        return int(mask.sum()) <= budget.k
    if isinstance(budget, PerRow):
        return bool((mask.sum(dim=1) <= budget.k).all())
    if isinstance(budget, NM):
        return bool((mask.reshape(mask.shape[0], -1, budget.m).sum(dim=2) <= budget.n).all())
    columns = mask.reshape(mask.shape[0], -1, budget.group)
    whole = bool((columns.all(dim=(0, 2)) | ~columns.any(dim=(0, 2))).all())
    return whole and int(columns.any(dim=(0, 2)).sum()) <= budget.k


@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_gate_constraints_are_the_budget(budget):
    shape = (2, 4)
    card = Cardinality.of(budget, shape)
    for bits in itertools.product([False, True], repeat=8):
        mask = torch.tensor(bits).reshape(shape)
        assert feasible(card, mask) == by_definition(budget, mask), bits
    assert feasible(card, budget.select(torch.rand(shape)))


@pytest.mark.parametrize(
    ("budget", "atoms", "independent"),
    [(Unstructured(k=5), 8, False), (PerRow(k=2), 8, True), (NM(1, 2), 8, True),
     (Structured(k=1, group=2), 2, False)],
    ids=repr,
)
def test_atoms_and_row_independence(budget, atoms, independent):
    card = Cardinality.of(budget, (2, 4))
    assert card.atoms == atoms and card.rows_independent == independent
    index = card.atom_index()
    assert index.shape == (2, 4) and set(index.reshape(-1).tolist()) == set(range(atoms))
    values = torch.arange(8.0).reshape(2, 4)
    assert float(card.pool(values).sum()) == float(values.sum())


def test_unknown_budget_is_named():
    with pytest.raises(ValueError, match="budget must be"):
        Cardinality.of(object(), (2, 4))
