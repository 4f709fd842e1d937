"""Checking values where they enter: one message form for the library and the command line.

Each check is ``check(value, name) -> value``: ``name`` is what the user wrote (an argument
``sparsity``, a flag ``--sparsity``, a recipe key ``sparsity in recipe.toml``), and a bad value
raises ``ValueError("NAME must be WHAT, got VALUE")``. The checks return the value in its
canonical type, so nothing downstream parses it again. The ``parse_*`` helpers turn the text of
a flag into a number first; the library takes numbers as they are.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "boolean", "choice", "first_line", "folder", "fraction", "inside", "integer", "non_negative",
    "optional_boolean", "parse_integer", "parse_number", "patterns", "positive", "show",
    "tolerance",
]


def show(value) -> str:
    """``value`` as an error message shows it: its ``repr`` (so text shows its quotes).

    Example:
        >>> show("yes"), show(None)
        ("'yes'", 'None')
    """
    return repr(value)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none.

    Example:
        >>> first_line(ValueError("bad value\\nmore detail")), first_line(KeyError())
        ('bad value', 'KeyError')
    """
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _number(value, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {what}, got {show(value)}")
    return float(value)


def fraction(value, name: str) -> float:
    """A sparsity: a number in [0, 1).

    Example:
        >>> fraction(0.5, "sparsity")
        0.5
    """
    number = _number(value, name, "a fraction in [0, 1)")
    if not 0 <= number < 1:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {show(value)}")
    return number


def tolerance(value, name: str) -> float:
    """A loss tolerance: a number >= 1 (a ratio of losses)."""
    number = _number(value, name, "a number >= 1 (a loss ratio)")
    if number < 1:
        raise ValueError(f"{name} must be a number >= 1, got {show(value)} (a loss ratio)")
    return number


def positive(value, name: str) -> float:
    """A number > 0."""
    number = _number(value, name, "a positive number")
    if number <= 0:
        raise ValueError(f"{name} must be a positive number, got {show(value)}")
    return number


def non_negative(value, name: str) -> float:
    """A number >= 0."""
    number = _number(value, name, "a number >= 0")
    if number < 0:
        raise ValueError(f"{name} must be a number >= 0, got {show(value)}")
    return number


def integer(value, name: str, minimum: int | None = None) -> int:
    """An integer (not a bool), at least ``minimum`` when given.

    Example:
        >>> integer(3, "steps", 1)
        3
    """
    what = ("an integer" if minimum is None else "a non-negative integer" if minimum == 0
            else "a positive integer" if minimum == 1 else f"an integer >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, int) or (
        minimum is not None and value < minimum
    ):
        raise ValueError(f"{name} must be {what}, got {show(value)}")
    return value


def boolean(value, name: str) -> bool:
    """``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {show(value)}")
    return value


def optional_boolean(value, name: str) -> bool | None:
    """``None``, ``True`` or ``False``."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be None, True or False, got {show(value)}")
    return value


def choice(value, name: str, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {show(value)}")
    return value


def patterns(value, name: str) -> tuple[str, ...]:
    """One layer pattern or a list of them, as a tuple: regexes of the full name, ``re:``
    regexes or class names (:class:`~l0prune.model.targets.Selector`), each compiling.

    Example:
        >>> patterns(r"fc\\d", "targets"), patterns(["Linear", "re:.*mlp"], "targets")
        (('fc\\\\d',), ('Linear', 're:.*mlp'))
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(
        isinstance(p, str) for p in items
    ):
        raise ValueError(f"{name} must be a regex, a 're:' regex or a class name, or a list of "
                         f"them, got {show(value)}")
    for pattern in items:
        try:
            re.compile(pattern[3:] if pattern.startswith("re:") else pattern)
        except re.error as err:
            raise ValueError(f"{name}: {pattern!r} is not a valid regex ({err})") from None
    return tuple(items)


def folder(value, name: str, *, exists: bool = False) -> str:
    """A folder's path as text; with ``exists`` it must be an existing folder now."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise ValueError(f"{name} must be a folder path, got {show(value)}")
    path = os.fspath(value)
    if exists and not os.path.isdir(path):
        raise ValueError(f"{name} must be an existing folder, got {show(value)}")
    return path


def inside(root: str | os.PathLike, value, name: str) -> Path:
    """``root / value`` for a relative path read from a file in ``root``, when it stays inside
    ``root``: a path written in a file is untrusted, and one that leaves the folder (``..``, an
    absolute path, a symbolic link to elsewhere; compared once resolved) is refused.

    Args:
        root: the folder the file belongs to.
        value: the path as the file writes it.
        name: what it is, for the message (``"W of problem 3 in index.json"``).

    Returns:
        The path.

    Example:
        >>> inside("run", "model/a.safetensors", "weights").as_posix()
        'run/model/a.safetensors'
        >>> inside("run", "../secret", "weights")
        Traceback (most recent call last):
        ValueError: weights must be a path inside run, got '../secret'
    """
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"{name} must be a path inside {os.fspath(root)}, got {show(value)}")
    path = Path(root) / value
    base = Path(root).resolve()
    resolved = path.resolve()
    if Path(value).is_absolute() or resolved == base or not resolved.is_relative_to(base):
        raise ValueError(f"{name} must be a path inside {os.fspath(root)}, got {show(value)}")
    return path


def parse_number(text, name: str) -> float | int:
    """A flag's text as a number (an int where it reads as one); a number passes through.

    Example:
        >>> parse_number("0.5", "--sparsity"), parse_number("3", "--steps")
        (0.5, 3)
    """
    if not isinstance(text, str):
        return text
    try:
        return int(text) if re.fullmatch(r"\s*[+-]?\d+\s*", text) else float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text}") from None


def parse_integer(text, name: str):
    """A flag's text as an int where it reads as one, else unchanged (for :func:`integer`)."""
    if isinstance(text, str) and re.fullmatch(r"\s*[+-]?\d+\s*", text):
        return int(text)
    return text
