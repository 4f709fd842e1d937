"""The notebooks run top to bottom at the small size, and the committed ones hold a full-size run.

Each notebook is executed by a fresh kernel with ``L0PRUNE_NOTEBOOK_SIZE=small`` (see
``notebooks/common.py``); any cell error fails the test. The committed files are not changed.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "1_plain_problem.ipynb",
    "2_weighted_problem.ipynb",
    "3_optimality_gaps.ipynb",
    "4_solver_dynamics.ipynb",
    "5_loss_tolerance.ipynb",
    "6_prune_retrain.ipynb",
]


def _closing_line(notebook) -> str:
    """The text the last code cell printed (``Session.finish``)."""
    last = [cell for cell in notebook.cells if cell.cell_type == "code"][-1]
    return "".join(out.get("text", "") for out in last.outputs if out.output_type == "stream")


def test_every_notebook_is_here():
    assert [path.name for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_outputs_are_a_full_run(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert errors == []
    assert any(out.output_type == "display_data" and "image/png" in out.get("data", {})
               for cell in code for out in cell.outputs), "no figure in the committed outputs"
    closing = _closing_line(notebook)
    assert "Ran at size full" in closing and "Machine:" in closing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_at_small_size(path, monkeypatch):
    monkeypatch.setenv("L0PRUNE_NOTEBOOK_SIZE", "small")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    assert "Ran at size small" in _closing_line(notebook)
