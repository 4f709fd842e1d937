"""The package's metadata builds: a license expression needs setuptools 77, and the license
text it names ships."""

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_a_license_expression_asks_for_setuptools_77():
    """``license = "MIT"`` (PEP 639) fails to build with setuptools 68."""
    assert PYPROJECT["project"]["license"] == "MIT"
    (requirement,) = [r for r in PYPROJECT["build-system"]["requires"]
                      if r.startswith("setuptools")]
    major = int(re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", requirement).group(1))
    assert major >= 77


def test_the_mit_license_text_ships_with_its_copyright():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) the l0prune developers\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
