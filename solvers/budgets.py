"""Sparsity budgets: the feasible sets ``S`` of the layer problem and their projections.

Every budget answers one question, :meth:`Budget.select`: given a non-negative score per weight,
which support in ``S`` has the largest total score? With the score ``W**2`` that support is the
Euclidean projection ``P_S(W)`` (:meth:`Budget.project`); with ``(H_jj + lam) W_ij**2`` it is the
exact solution of the layer problem under a diagonal ``H``. Every solver goes through these two
methods and never special-cases a budget (the skglm "penalty" role).

Ties are broken deterministically: among equal scores the lower flat index is kept.

A budget's size is its ``count``: weights kept (unstructured), weights kept per row (per-row),
``n`` of ``n:m`` (N:M), or column groups kept (structured). ``with_count`` makes the same family
at another size, which is how the relative-error tolerance search walks the sparsity axis. A
sparsity becomes a count by one rounding rule, :func:`kept_at`, everywhere.

A budget owns its forms: its text (:attr:`Budget.text`, read back by :func:`parse_budget`:
``unstructured``, ``per-row``, ``structured``, ``2:4``, with a size ``unstructured(k=10)``) and
its JSON (:meth:`Budget.to_json`, read back by :meth:`Budget.from_json`).

A budget also describes its own structure, so no code outside this module tests budget types:
:meth:`Budget.layout` says how it counts (gates per weight or per column group, and the sets of
gates that share one count: what the exact programs, the bounds, hard-concrete and OBS need), and
:meth:`Budget.with_feature_width` adapts it to layers whose input features span several columns
(a convolution's ``kh * kw``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch

__all__ = ["Budget", "Layout", "Unstructured", "PerRow", "NM", "Structured", "kept_at",
           "parse_budget"]


_BRACKET_MIN = 1 << 16
_RANK_MAX = 8


def _top_k_by_rank(score: torch.Tensor, k: int) -> torch.Tensor:
    """``top_k_mask`` for short slices (N:M groups): each entry's rank among its slice, counted
    by ``m`` comparisons. Entry ``l`` outranks ``j`` if its score is higher, or equal with
    ``l < j``. Two to three times faster than ``topk`` on slices of 4, and free of host reads."""
    rank = torch.zeros(score.shape, dtype=torch.uint8, device=score.device)
    for l in range(score.shape[-1]):
        s_l = score[..., l : l + 1]
        beats = s_l > score
        beats[..., l + 1 :] |= s_l == score[..., l + 1 :]
        rank += beats
    return rank < k


def _kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest value of a long 1-D tensor, found in a bracket.

    A strided sample (deterministic) brackets the threshold with a margin of a few standard
    deviations of its rank; only the entries inside the bracket go through ``topk``. That is a
    few linear passes instead of a selection over the whole layer, which dominated first-order
    solver iterations on wide layers. Falls back to a full ``topk`` if the bracket misses.
    """
    n = flat.numel()
    sample = torch.sort(flat[:: n // 4096], descending=True).values
    m = sample.numel()
    rank = k / n * m
    margin = 4.0 * math.sqrt(m * (k / n) * (1 - k / n)) + 8.0
    t_hi = sample[max(int(rank - margin), 0)]
    t_lo = sample[min(int(rank + margin) + 1, m - 1)]
    below_hi = flat <= t_hi
    need = k - (n - int(torch.count_nonzero(below_hi)))
    if need > 0:
        band = flat[below_hi & (flat >= t_lo)]
        if need <= band.numel():
            return torch.topk(band, need, sorted=False).values.min()
    return torch.topk(flat, k, sorted=False).values.min()


def top_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries along the last dimension of ``score``.

    Ties at the threshold go to the lowest indices, so the mask is deterministic and holds exactly
    ``k`` entries per slice.
    """
    n = score.shape[-1]
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(score, dtype=torch.bool)
    if n <= _RANK_MAX:
        return _top_k_by_rank(score, k)
    # On the CPU a host read is free, and two shortcuts use one; elsewhere (a GPU) they would
    # stall the device, so the selection runs without them.
    cpu = score.device.type == "cpu"
    if cpu and score.numel() == n and n >= _BRACKET_MIN:
        threshold = _kth_largest(score.reshape(-1), k).reshape(score.shape[:-1] + (1,))
    else:
        threshold = torch.topk(score, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    above = score > threshold
    tied = score == threshold
    missing = k - torch.count_nonzero(above, dim=-1).unsqueeze(-1)
    if cpu and bool((torch.count_nonzero(tied, dim=-1).unsqueeze(-1) == missing).all()):
        return above | tied  # no tie to break
    return above | (tied & (torch.cumsum(tied, dim=-1) <= missing))


def _check_fraction(sparsity: float) -> None:
    if not (isinstance(sparsity, (int, float)) and math.isfinite(sparsity) and 0 <= sparsity < 1):
        raise ValueError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")


def _check_count(k: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {k!r}")


def kept_at(total: int, sparsity: float) -> int:
    """How many of ``total`` units a ``sparsity`` keeps: ``round((1 - sparsity) * total)``, the
    one rounding rule of every budget, layer allocation and search.

    Example:
        >>> kept_at(10, 0.75), kept_at(7, 0.5)
        (2, 4)
    """
    return int(round((1.0 - sparsity) * total))


def _count_from(sparsity: float | None, k: int | None, total: int, what: str) -> int:
    if k is not None:
        if k > total:
            raise ValueError(f"k={k} exceeds the {total} {what} available")
        return k
    if sparsity is None:
        raise ValueError(
            "the budget has no size: give sparsity= (a fraction in [0, 1)) or k= (a count)"
        )
    return kept_at(total, sparsity)


@dataclass(frozen=True)
class Layout:
    """How a budget counts on a weight: "at most ``count`` gates open in every set".

    Attributes:
        group: ``None`` for one gate per weight; ``g`` for one gate per ``g`` consecutive input
            columns, shared by all rows.
        set_size: gates per set; the gates, in row-major order, fill the sets in turn.
        count: the most gates open in one set.
    """

    group: int | None
    set_size: int
    count: int


@dataclass(frozen=True)
class Budget:
    """Base class. Subclasses define :meth:`kept`, :meth:`select`, :meth:`max_count` and
    :meth:`layout`."""

    sparsity: float | None = None
    k: int | None = None

    def __post_init__(self) -> None:
        if self.sparsity is not None and self.k is not None:
            raise ValueError(
                f"give one of sparsity= or k=, not both (got sparsity={self.sparsity!r}, "
                f"k={self.k!r})"
            )
        if self.sparsity is not None:
            _check_fraction(self.sparsity)
        if self.k is not None:
            _check_count(self.k)

    @property
    def sized(self) -> bool:
        """Whether the budget has a size (a sparsity or a count)."""
        return self.sparsity is not None or self.k is not None

    def check(self, shape: tuple[int, int]) -> None:
        """Raise ``ValueError`` if the budget cannot apply to a weight of ``shape``."""
        self.count(shape)

    def count(self, shape: tuple[int, int]) -> int:
        """The budget's size for a weight of ``shape`` (see the module docstring)."""
        return _count_from(self.sparsity, self.k, self.max_count(shape), self._unit)

    def max_count(self, shape: tuple[int, int]) -> int:
        raise NotImplementedError

    def kept(self, shape: tuple[int, int]) -> int:
        """Number of weights a support of this budget holds."""
        raise NotImplementedError

    def with_count(self, count: int) -> Budget:
        """The same budget family, sized by ``count``."""
        return replace(self, sparsity=None, k=count)

    def at(self, shape: tuple[int, int], sparsity: float, least: int = 0) -> Budget:
        """The same family sized for a weight of ``shape`` at ``sparsity`` (by :func:`kept_at`
        of :meth:`max_count`), with at least ``least`` of its units kept."""
        return self.with_count(max(kept_at(self.max_count(shape), sparsity), least))

    @property
    def text(self) -> str:
        """The budget as text, as the command line and recipes write it: ``unstructured``,
        ``per-row``, ``structured``, ``structured(group=9)``, ``2:4``; a size in brackets,
        ``unstructured(sparsity=0.5)``, ``per-row(k=3)``. :func:`parse_budget` reads it back.

        Example:
            >>> Unstructured().text, PerRow(k=3).text, NM(2, 4).text
            ('unstructured', 'per-row(k=3)', '2:4')
        """
        settings = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                    if getattr(self, f.name) != f.default]
        return self._name + (f"({', '.join(settings)})" if settings else "")

    def __str__(self) -> str:
        return self.text

    def to_json(self) -> dict:
        """The budget as a JSON-ready dict: ``{"type": name, **fields not at their default}``.

        Example:
            >>> NM(2, 4).to_json(), Structured(group=9, k=2).to_json()
            ({'type': 'n:m', 'n': 2, 'm': 4}, {'type': 'structured', 'k': 2, 'group': 9})
        """
        return {"type": self._name, **{f.name: getattr(self, f.name) for f in fields(self)
                                       if getattr(self, f.name) != f.default}}

    @staticmethod
    def from_json(data: Mapping) -> Budget:
        """The budget of :meth:`to_json` (also the class-named form of older problem folders,
        ``{"type": "Unstructured", "sparsity": null, "k": 10}``).

        Raises:
            ValueError: naming what is wrong with ``data``.

        Example:
            >>> Budget.from_json(NM(2, 4).to_json()) == NM(2, 4)
            True
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
            raise ValueError(f"a budget must be a JSON object with a type, got {data!r}")
        name = data["type"]
        cls = _BY_JSON.get(name) or _BY_JSON.get(name.lower())
        if cls is None:
            raise ValueError(f"unknown budget type {name!r}; known: {', '.join(_BY_JSON)}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k != "type"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"budget type {name!r} has no field(s) {unknown}")
        if cls is NM:
            return NM(values.get("n", 2), values.get("m", 4))
        return cls(**values)

    def layout(self, shape: tuple[int, int]) -> Layout:
        """The budget's gates and counting sets on a weight of ``shape`` (see :class:`Layout`)."""
        raise NotImplementedError

    def with_feature_width(self, width: int) -> Budget:
        """The budget on a layer whose input features each span ``width`` consecutive columns
        (a convolution's ``kh * kw``). Only budgets that count features change."""
        return self

    def select(self, score: torch.Tensor) -> torch.Tensor:
        """The feasible support maximising ``score`` summed over it (a boolean mask)."""
        raise NotImplementedError

    def project(self, weight: torch.Tensor) -> torch.Tensor:
        """Euclidean projection onto the budget: ``weight`` kept on ``select(weight**2)``."""
        return weight * self.select(weight * weight)

    _unit = "weights"
    _name = "budget"


@dataclass(frozen=True)
class Unstructured(Budget):
    """At most ``k`` non-zeros anywhere in the layer (``sparsity = 1 - k / W.numel()``)."""

    _name = "unstructured"

    def max_count(self, shape):
        return shape[0] * shape[1]

    def kept(self, shape):
        return self.count(shape)

    def layout(self, shape):
        return Layout(None, shape[0] * shape[1], self.count(shape))

    def select(self, score):
        k = self.count(tuple(score.shape))
        return top_k_mask(score.reshape(1, -1), k).reshape(score.shape)


@dataclass(frozen=True)
class PerRow(Budget):
    """At most ``k`` non-zeros in each output row (``k`` counts weights per row)."""

    _unit = "weights per row"
    _name = "per-row"

    def max_count(self, shape):
        return shape[1]

    def kept(self, shape):
        return shape[0] * self.count(shape)

    def layout(self, shape):
        return Layout(None, shape[1], self.count(shape))

    def select(self, score):
        return top_k_mask(score, self.count(tuple(score.shape)))


@dataclass(frozen=True, init=False)
class NM(Budget):
    """At most ``n`` non-zeros in every group of ``m`` consecutive inputs of a row (2:4 on GPUs).

    ``NM(2, 4)``; its count is ``n``.
    """

    n: int = 2
    m: int = 4

    _name = "n:m"

    @property
    def text(self) -> str:
        return f"{self.n}:{self.m}"

    def to_json(self) -> dict:
        return {"type": self._name, "n": self.n, "m": self.m}

    def __init__(self, n: int = 2, m: int = 4):
        _check_count(n, "n")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be a positive integer, got {m!r}")
        if n > m:
            raise ValueError(f"N:M needs n <= m, got n={n}, m={m}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "sparsity", None)
        object.__setattr__(self, "k", None)

    @property
    def sized(self):
        return True

    def count(self, shape):
        if shape[1] % self.m:
            raise ValueError(
                f"N:M budget {self.n}:{self.m} needs the input size divisible by m={self.m}, "
                f"got W with {shape[1]} inputs"
            )
        return self.n

    def max_count(self, shape):
        return self.m

    def kept(self, shape):
        return shape[0] * shape[1] // self.m * self.count(shape)

    def with_count(self, count):
        return NM(count, self.m)

    def layout(self, shape):
        return Layout(None, self.m, self.count(shape))

    def select(self, score):
        out, inp = score.shape
        n = self.count((out, inp))
        return top_k_mask(score.reshape(out, inp // self.m, self.m), n).reshape(out, inp)


@dataclass(frozen=True)
class Structured(Budget):
    """Whole input columns kept or dropped: at most ``k`` column groups survive.

    ``group`` consecutive input columns form one unit (a Conv's ``kh * kw`` columns of one input
    channel); ``k`` counts groups kept, ``sparsity`` the fraction of groups dropped.
    """

    group: int = 1

    _unit = "column groups"
    _name = "structured"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.group, bool) or not isinstance(self.group, int) or self.group < 1:
            raise ValueError(f"group must be a positive integer, got {self.group!r}")

    def max_count(self, shape):
        if shape[1] % self.group:
            raise ValueError(
                f"structured budget with group={self.group} needs the input size divisible by "
                f"the group, got W with {shape[1]} inputs"
            )
        return shape[1] // self.group

    def kept(self, shape):
        return shape[0] * self.count(shape) * self.group

    def layout(self, shape):
        return Layout(self.group, self.max_count(shape), self.count(shape))

    def with_feature_width(self, width):
        return replace(self, group=self.group * width)

    def select(self, score):
        out, inp = score.shape
        k = self.count((out, inp))
        group_score = score.sum(dim=0).reshape(1, inp // self.group, self.group).sum(dim=-1)
        keep = top_k_mask(group_score, k).reshape(-1)
        return keep.repeat_interleave(self.group).reshape(1, inp).expand(out, inp).clone()


_BY_JSON: dict[str, type[Budget]] = {
    "unstructured": Unstructured, "per-row": PerRow, "structured": Structured, "n:m": NM,
    **{cls.__name__: cls for cls in (Unstructured, PerRow, NM, Structured)},
}
_BY_TEXT = {"unstructured": Unstructured, "per-row": PerRow, "structured": Structured}
_TEXT = re.compile(r"(?P<name>[a-z-]+)(\((?P<settings>[^()]*)\))?")


def parse_budget(text: str | Budget) -> Budget:
    """A budget from its text (:attr:`Budget.text`); a :class:`Budget` is returned as it is.

    Args:
        text: ``unstructured``, ``per-row``, ``structured``, ``N:M`` (``2:4``), or one of the
            first three with settings in brackets: ``structured(group=4)``,
            ``unstructured(sparsity=0.5)``, ``per-row(k=3)`` (case and spaces do not matter).

    Returns:
        The budget.

    Raises:
        ValueError: naming the text and the forms it can take.

    Example:
        >>> parse_budget("2:4").text, parse_budget("Per-Row(k=3)")
        ('2:4', PerRow(sparsity=None, k=3))
    """
    if isinstance(text, Budget):
        return text
    forms = ("unstructured, per-row, structured or N:M such as 2:4, optionally with settings "
             "such as structured(group=4) or unstructured(sparsity=0.5)")
    if not isinstance(text, str):
        raise ValueError(f"budget must be text ({forms}) or a Budget, got {text!r}")
    clean = re.sub(r"\s+", "", text).lower()
    nm = re.fullmatch(r"(\d+):(\d+)", clean)
    if nm:
        n, m = int(nm[1]), int(nm[2])
        if not 0 < n <= m:
            raise ValueError(f"budget {text!r}: N:M needs 0 < N <= M")
        return NM(n, m)
    match = _TEXT.fullmatch(clean)
    if match is None or match["name"] not in _BY_TEXT:
        raise ValueError(f"budget must be {forms}; got {text!r}")
    cls = _BY_TEXT[match["name"]]
    values: dict[str, object] = {}
    for item in filter(None, (match["settings"] or "").split(",")):
        key, _, value = item.partition("=")
        if key not in {f.name for f in fields(cls)} or not value:
            raise ValueError(f"budget {text!r}: {match['name']} takes "
                             f"{', '.join(f.name + '=' for f in fields(cls))}, got {item!r}")
        try:
            values[key] = float(value) if key == "sparsity" else int(value)
        except ValueError:
            raise ValueError(f"budget {text!r}: {key} must be a number, got {value!r}") from None
    return cls(**values)
