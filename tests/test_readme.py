"""The README's and the documentation's install and test instructions say what holds."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GETTING_STARTED = (ROOT / "docs" / "getting-started.md").read_text()


def _slow_tests() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if p.name != "test_readme.py" and "mark.slow" in p.read_text())


def _first_bash_block(text: str, section: str) -> str:
    return text.split(section, 1)[1].split("```bash", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("text, section", [(README, "## Quick start"),
                                           (GETTING_STARTED, "## Install")],
                         ids=["README", "getting-started"])
def test_the_install_line_takes_torch_from_the_cpu_index_and_says_how_to_get_cuda(text, section):
    """pip finds the CUDA wheel on PyPI for Linux: the CPU index has to be named."""
    assert re.search(r"^pip install torch==[\d.]+ --index-url https://download\.pytorch\.org/"
                     r"whl/cpu", _first_bash_block(text, section), re.MULTILINE)
    assert "https://download.pytorch.org/whl/cuXXX" in text
    # CI installs from whatever index pip has (a machine may have no route to PyTorch's).
    assert "download.pytorch.org" not in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("text", [README, GETTING_STARTED], ids=["README", "getting-started"])
def test_what_the_readme_says_about_slow_tests_holds(text):
    """It once said `python -m pytest -m slow` runs the slow tests, which selected nothing."""
    if "none does at present" in text:
        assert _slow_tests() == []
    else:
        assert "-m slow" in text and _slow_tests() != []
        named = set(re.findall(r"tests/[\w/]+\.py", text)) - {"tests/test_notebooks.py"}
        assert named and named <= set(_slow_tests())


def test_the_test_command_is_what_ci_runs():
    assert "python -m pytest -q" in README
    assert re.search(r"^python -m pytest -q$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)


def test_the_readme_is_a_front_page_whose_links_resolve():
    assert len(README.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert links
    for link in links:
        if not link.startswith(("http://", "https://")):
            assert (ROOT / link).is_file(), link
