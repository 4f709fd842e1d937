"""Checking one value of an option, from a flag (text) or a recipe (TOML types), for both
``l0prune prune`` and ``l0prune solve``.

Each check is ``check(value, label) -> value``; ``label`` names the flag or the recipe key, and a
bad value raises :class:`~l0prune.cli.errors.UsageError` saying what was expected and what came.
The checks are those of :mod:`l0prune.validate`, after the text of a flag is read as a number;
none imports torch or a solver before it is called.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable

from solvers.registry import method_function, methods

from .errors import UsageError

__all__ = [
    "budget",
    "choice",
    "existing_folder",
    "flag",
    "fraction",
    "integer",
    "non_negative",
    "nonempty",
    "patterns",
    "positive",
    "reference",
    "solver",
    "tolerance",
    "torch_device",
]


def _show(value) -> str:
    return value if isinstance(value, str) and value.strip() else repr(value)


def _number(value, label: str, what: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"{label} must be {what}, got {_show(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{label} must be {what}, got {_show(value)}")
    return float(value)


def fraction(value, label: str) -> float:
    """A sparsity: a number in [0, 1)."""
    what = "a fraction in [0, 1)"
    number = _number(value, label, what)
    if not 0 <= number < 1:
        raise UsageError(f"{label} must be {what}, got {_show(value)}")
    return number


def tolerance(value, label: str) -> float:
    """A loss tolerance: a number >= 1."""
    what = "a loss ratio >= 1"
    number = _number(value, label, what)
    if number < 1:
        raise UsageError(f"{label} must be {what}, got {_show(value)}")
    return number


def non_negative(value, label: str) -> float:
    """A number >= 0."""
    number = _number(value, label, "a number >= 0")
    if number < 0:
        raise UsageError(f"{label} must be a number >= 0, got {_show(value)}")
    return number


def positive(value, label: str) -> float:
    """A number > 0."""
    number = _number(value, label, "a positive number")
    if number <= 0:
        raise UsageError(f"{label} must be a positive number, got {_show(value)}")
    return number


def integer(minimum: int) -> Callable[[object, str], int]:
    """The check of an integer >= ``minimum``."""
    what = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"

    def convert(value, label: str) -> int:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UsageError(f"{label} must be {what}, got {_show(value)}")
        return value

    return convert


def nonempty(value, label: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{label} must be a non-empty string, got {_show(value)}")
    return value


def existing_folder(value, label: str) -> str:
    """The path of a folder that exists now."""
    text = nonempty(value, label)
    if not os.path.isdir(text):
        raise UsageError(f"{label} must be an existing folder, got {_show(value)}")
    return text


def reference(value, label: str) -> str:
    """``MODULE:NAME`` (checked for form only; :mod:`l0prune.cli.references` imports it)."""
    text = nonempty(value, label)
    module, _, name = text.rpartition(":")
    if not module or not name.isidentifier():
        raise UsageError(
            f"{label} must be MODULE:NAME (a module or .py file, a colon, a function or "
            f"object in it), got {_show(value)}"
        )
    return text


def choice(*names: str) -> Callable[[object, str], str]:
    """One of ``names``."""
    def convert(value, label: str) -> str:
        if value not in names:
            raise UsageError(f"{label} must be one of {', '.join(names)}; got {_show(value)}")
        return value

    return convert


def solver(*extra: str) -> Callable[[object, str], str]:
    """A solver of :func:`solvers.methods` that imports (or one of ``extra``)."""

    def convert(value, label: str) -> str:
        name = choice(*methods(), *extra)(value, label)
        if name not in extra:
            try:
                method_function(name)
            except ImportError as err:
                raise UsageError(
                    f"{label} {name}: its solver needs {err.name or 'a module'}, which is not "
                    f"installed"
                ) from None
        return name

    return convert


def flag(value, label: str) -> bool:
    """``True`` or ``False`` (a TOML boolean; flags give one already)."""
    if not isinstance(value, bool):
        raise UsageError(f"{label} must be true or false, got {_show(value)}")
    return value


def patterns(value, label: str) -> list[str]:
    """One or more layer patterns: regexes of the full name, ``re:`` regexes (matched from
    the name's start) or class names, each compiling."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) for p in items):
        raise UsageError(f"{label} must be one or more regexes, 're:' regexes or class names, "
                         f"got {_show(value)}")
    for pattern in items:
        try:
            re.compile(pattern[3:] if pattern.startswith("re:") else pattern)
        except re.error as err:
            raise UsageError(f"{label}: {pattern!r} is not a valid regex ({err})") from None
    return list(items)


def budget(value, label: str):
    """A sparsity pattern (:func:`solvers.parse_budget`): ``unstructured``, ``per-row``,
    ``structured`` or ``N:M`` such as ``2:4``; the :class:`~solvers.Budget` it names."""
    from solvers.budgets import parse_budget

    text = nonempty(value, label)
    try:
        return parse_budget(text)
    except ValueError:
        if re.fullmatch(r"\s*\d+\s*:\s*\d+\s*", text):
            raise UsageError(f"{label} N:M needs 0 < N <= M, got {_show(value)}") from None
        raise UsageError(f"{label} must be one of unstructured, per-row, structured or N:M "
                         f"such as 2:4; got {_show(value)}") from None


def torch_device(value, label: str) -> str:
    """A torch device name whose device is available here."""
    import torch

    text = nonempty(value, label)
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"{label} must be a torch device such as cpu or cuda:0, got {text}"
        ) from None
    if device.type == "meta":
        raise UsageError(f"{label} must be a device that holds data, such as cpu; got meta")
    try:
        torch.empty(0, device=device)
    except Exception:  # torch raises AssertionError or RuntimeError by backend
        raise UsageError(f"{label} {text}: no such device is available here") from None
    return text
