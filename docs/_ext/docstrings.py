"""A griffe extension that reads l0prune's docstrings as the API pages need them.

The docstrings follow the Google style with two habits of the Sphinx world: an ``Example:``
section (Google's parser knows only ``Examples:``) and roles such as ``:func:`~solvers.solve```.
This turns the first into ``Examples:`` (so its ``>>>`` lines render as code) and each role into
inline code of the name it shows (the last component after ``~``). It changes nothing in the
code; it runs only when mkdocs builds the pages.
"""

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def _name(match: re.Match) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class SphinxHabits(griffe.Extension):
    """Rewrites every docstring's ``Example:`` heading and Sphinx roles as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_name, text)
