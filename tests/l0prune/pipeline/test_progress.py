"""Progress output: counted steps on a terminal, a few plain lines elsewhere: one per stage, and
one every so often while a stage runs."""

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


def test_a_pipe_gets_one_line_per_stage_and_none_from_the_displays_inside_it(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with progress("alpha search", "trial") as search:
        for ratio in ("1.01", "1.03", "0.99"):
            with progress("layers", "layer", total=3, transient=True) as layers:
                for _ in range(3):
                    layers.update()
            search.set_postfix(ratio=ratio)
            search.update()
    with progress("layers", "layer", total=1, transient=True) as layers:
        layers.update()
    assert pipe.getvalue() == "alpha search: 3 trials\nlayers: 1 / 1 layer\n"


def test_a_long_stage_writes_a_line_with_its_figures_every_so_often(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    clock = iter([0.0, 5.0, 31.0, 40.0, 62.0])
    monkeypatch.setattr("l0prune.pipeline.progress.time.monotonic", lambda: next(clock))
    with progress("blocks", "block", total=4) as bar:  # opened at 0 s
        for error in ("0.01", "0.02", "0.03", "0.04"):  # steps at 5, 31, 40, 62 s
            bar.set_postfix(error=error)
            bar.update()
    assert pipe.getvalue().splitlines() == [
        "blocks: block 2 / 4 (error 0.02)", "blocks: block 4 / 4 (error 0.04)",
        "blocks: 4 / 4 blocks"]


def test_nothing_when_disabled(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with progress("layers", "layer", total=2, enabled=False) as bar:
        bar.update()
    assert pipe.getvalue() == ""
