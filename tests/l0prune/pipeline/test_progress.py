"""Progress output: counted steps on a terminal, one plain line per step elsewhere."""

import io

from l0prune.pipeline.progress import Lines, progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_that_counts_trials_with_a_space(monkeypatch):
    """It once showed '8trial' with no total."""
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress("alpha search", "trial") as bar:
        for _ in range(8):
            bar.update()
    assert "alpha search: 8 trials" in terminal.getvalue()
    assert not isinstance(bar, Lines)


def test_a_pipe_gets_one_line_per_step_with_its_figures(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with progress("layers", "layer", total=2, transient=True) as bar:
        bar.update()
        bar.set_postfix(error="0.012")
        bar.update()
    assert pipe.getvalue() == "layers: layer 1 / 2\nlayers: layer 2 / 2 (error 0.012)\n"


def test_nothing_when_disabled(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with progress("layers", "layer", total=2, enabled=False) as bar:
        bar.update()
    assert pipe.getvalue() == ""
