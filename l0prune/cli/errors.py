"""The one exception the command line turns into a one-line message: a user's mistake."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """Bad input on the command line or in a recipe: the message names the argument and value."""
