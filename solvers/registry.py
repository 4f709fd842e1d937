"""The registry of layer methods: each name, its function, and what it takes and needs.

The built-in methods are named here and imported on first use (so listing them, as the command
line's help does, loads no solver and no torch); :func:`register_method` adds one. The registry
records what each method takes and needs (:class:`MethodInfo`: a seed, a warm start, which
statistics), so callers never guess from a signature.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["MethodInfo", "method_function", "method_info", "methods", "register_method"]

#: What :attr:`MethodInfo.statistics` may say.
STATISTICS = ("full", "diagonal", "none")


@dataclass(frozen=True)
class MethodInfo:
    """What a method takes and needs, recorded when it is registered.

    Attributes:
        name: the method's name.
        statistics: what it reads of the layer's input statistics ``H``: ``"full"`` the matrix,
            ``"diagonal"`` its diagonal only (the inputs' squared norms), ``"none"`` nothing
            (it works on ``W`` alone); an option ``refit=True`` always needs ``"full"``.
        seed: whether it takes ``seed=`` (it draws random numbers).
        start: whether it takes ``init=`` (a warm start from a weight).
    """

    name: str
    statistics: str = "full"
    seed: bool = False
    start: bool = False

    def statistics_for(self, options: Mapping) -> str:
        """:attr:`statistics` under ``options`` (a refit solves on the full ``H``).

        Example:
            >>> method_info("magnitude").statistics_for({"refit": True})
            'full'
        """
        return "full" if options.get("refit") else self.statistics


#: The built-in methods: their (module, function), imported on first use, and what they take.
_BUILT_IN = {
    "magnitude": (("solvers.magnitude", "magnitude"), MethodInfo("magnitude", "none")),
    "wanda": (("solvers.magnitude", "wanda"), MethodInfo("wanda", "diagonal")),
    "obs": (("solvers.obs", "obs"), MethodInfo("obs")),
    "iht": (("solvers.iht", "iht"), MethodInfo("iht", start=True)),
    "admm": (("solvers.admm", "admm"), MethodInfo("admm", start=True)),
    "hard_concrete": (("solvers.hard_concrete", "hard_concrete"),
                      MethodInfo("hard_concrete", seed=True)),
    "exact": (("solvers.exact", "exact"), MethodInfo("exact")),
}
#: method name -> the function, or the built-ins' (module, function) until first use.
_METHODS: dict[str, Callable | tuple[str, str]] = {n: f for n, (f, _) in _BUILT_IN.items()}
_INFO: dict[str, MethodInfo] = {n: info for n, (_, info) in _BUILT_IN.items()}


def register_method(name: str, fn: Callable, *, statistics: str = "full", seed: bool = False,
                    start: bool = False) -> None:
    """Make ``fn`` available as ``solve(problem, method=name)`` (and to l0prune and its CLI).

    Args:
        name: the method's name; a new one (the built-ins cannot be replaced).
        fn: ``fn(problem, *, option=default, ...) -> (weight, mask, info)``: a feasible
            ``weight`` of the :class:`~solvers.problem.LayerProblem`, its boolean ``mask``
            meeting ``problem.budget`` exactly, and an ``info`` dict (``iterations``,
            ``converged``, ``history`` and anything else); options are keyword-only.
        statistics: what it reads of ``H`` (see :class:`MethodInfo`).
        seed: it takes ``seed=``, which l0prune then sets from the run's seed.
        start: it takes ``init=`` (a warm start).

    Example:
        >>> import torch
        >>> from solvers import LayerProblem, register_method, solve
        >>> def keep_first(problem):
        ...     mask = problem.budget.select(torch.arange(problem.W.numel(), 0, -1.0)
        ...                                  .reshape(problem.shape))
        ...     return problem.W * mask, mask, {"iterations": 0, "converged": True, "history": []}
        >>> register_method("keep_first", keep_first)
        >>> solve(LayerProblem(torch.ones(2, 4), None, k=3), "keep_first").mask.sum().item()
        3
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise ValueError(f"fn must be callable (problem, **options) -> (weight, mask, info), "
                         f"got {fn!r}")
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {list(STATISTICS)}, got {statistics!r}")
    info = MethodInfo(name, statistics, seed, start)
    current = _METHODS.get(name)
    if current is not None and (current is not fn or _INFO[name] != info):
        raise ValueError(f"method {name!r} is already registered; choose another name")
    _METHODS[name] = fn
    _INFO[name] = info


def method_info(method: str) -> MethodInfo:
    """What ``method`` takes and needs (see :class:`MethodInfo`).

    Raises:
        ValueError: an unknown name.

    Example:
        >>> method_info("wanda").statistics, method_info("admm").start
        ('diagonal', True)
    """
    if method not in _INFO:
        raise ValueError(f"method must be one of {methods()}, got {method!r}")
    return _INFO[method]


def methods() -> list[str]:
    """The names :func:`solve` accepts, sorted."""
    return sorted(_METHODS)


def method_function(method: str) -> Callable:
    """The function behind ``method`` (a built-in's module is imported now).

    Raises:
        ValueError: an unknown name. ``ImportError``: a built-in whose module needs a package
            that is not installed.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {methods()}, got {method!r}")
    fn = _METHODS[method]
    if isinstance(fn, tuple):
        module, name = fn
        fn = _METHODS[method] = getattr(importlib.import_module(module), name)
    return fn


