"""The README's install and test instructions say what holds."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _slow_tests() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if p.name != "test_readme.py" and "mark.slow" in p.read_text())


def test_the_install_line_takes_torch_from_the_cpu_index_and_says_how_to_get_cuda():
    """pip finds the CUDA wheel on PyPI for Linux: the CPU index has to be named."""
    quick_start = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert re.search(r"^pip install torch==[\d.]+ --index-url https://download\.pytorch\.org/"
                     r"whl/cpu", quick_start, re.MULTILINE)
    assert "https://download.pytorch.org/whl/cuXXX" in README
    # CI installs from whatever index pip has (a machine may have no route to PyTorch's).
    assert "download.pytorch.org" not in (ROOT / ".ci" / "run").read_text()


def test_what_the_readme_says_about_slow_tests_holds():
    """It once said `python -m pytest -m slow` runs the slow tests, which selected nothing."""
    if "none does at present" in README:
        assert _slow_tests() == []
    else:
        assert "-m slow" in README and _slow_tests() != []
