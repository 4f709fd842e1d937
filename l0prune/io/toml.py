"""Writing recipe values as TOML (Python reads TOML with ``tomllib`` but writes none)."""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["toml_value"]


def toml_value(value) -> str:
    """``value`` in TOML: booleans, numbers, strings, and lists and tables of them.

    Example:
        >>> toml_value({"fc1": 0.9}), toml_value([True, "a"])
        ('{"fc1" = 0.9}', '[true, "a"]')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise ValueError(f"{value!r} cannot be written to a recipe")
