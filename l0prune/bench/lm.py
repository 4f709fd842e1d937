"""The language-model benchmark: held-out perplexity of the built-in LM pruned by each solver.

``l0prune bench lm [--quick] [--size default|tiny] [--methods M ...]
[--patterns P ...] [--nsamples N] [--heldout-windows N] [--threads N] [--out FILE] [--plot FILE]``

The built-in causal LM of :mod:`l0prune.demo.lm` (trained on first use and cached) is pruned by
:func:`l0prune.prune` with every method at every pattern (50 %, 70 %, 90 % unstructured and 2:4),
with sequential statistics and without, each run from the dense model: every ``Linear`` of the
blocks (the tied head stays dense), calibrated on ``--nsamples`` windows of the training text
drawn with seed 0 (128 windows of 128 tokens, SparseGPT's recipe at this model's length). A row
gives the held-out perplexity (the first ``--heldout-windows`` consecutive windows of the held-out
text, whose files the model and the tokenizer never saw) and the seconds of the ``prune`` call
(statistics and solves; the evaluation is not counted), wall-clock and CPU. ``magnitude`` does
not read the data, so it runs once (sequential: ``-``).

The table is printed and written as markdown (default ``bench-results/lm.md``, the rows also as
``lm.json`` next to it) with the plot of the perplexity increase per method and pattern (default
``bench-results/lm.png``). ``--quick``: 32
calibration windows and 64 held-out windows.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import l0prune
from l0prune.demo.lm import SIZES, BuiltinLM, builtin_lm, perplexity

from . import add_threads_option, use_threads

__all__ = ["METHODS", "PATTERNS", "Row", "comparisons", "main", "plot", "prune_once", "run",
           "table", "write_json"]

METHODS = ("magnitude", "wanda", "obs", "iht", "admm")
#: Pattern name -> the keyword arguments of :func:`l0prune.prune` and its sparsity.
PATTERNS = {
    "50 %": ({"sparsity": 0.5}, 0.5),
    "70 %": ({"sparsity": 0.7}, 0.7),
    "90 %": ({"sparsity": 0.9}, 0.9),
    "2:4": ({"budget": l0prune.NM(2, 4)}, 0.5),
}
#: The layers pruned: every Linear inside the blocks (attention and MLP).
TARGETS = r"model\.layers\.\d+\..*"


@dataclass
class Row:
    """One method, pattern and statistics setting.

    Attributes:
        method: the solver.
        pattern: a key of :data:`PATTERNS`.
        sequential: sequential statistics, or ``None`` for a method that reads no data.
        perplexity: held-out perplexity after pruning.
        sparsity: the fraction of the targets' weights that are zero.
        seconds: wall-clock seconds of the ``prune`` call.
        cpu_seconds: CPU seconds of the ``prune`` call (this process).
    """

    method: str
    pattern: str
    sequential: bool | None
    perplexity: float
    sparsity: float
    seconds: float
    cpu_seconds: float


def _sparsity(model: nn.Module) -> float:
    masks = list(l0prune.masks_of(model).values())
    return 1.0 - sum(int(mask.sum()) for mask in masks) / sum(mask.numel() for mask in masks)


def prune_once(dense: nn.Module, calibration, heldout, method: str, pattern: str,
               sequential: bool, seed: int = 0) -> tuple[Row, nn.Module]:
    """Prune a copy of ``dense`` once and measure its held-out perplexity.

    Args:
        dense: the dense model (not changed).
        calibration: calibration batches.
        heldout: held-out batches for the perplexity.
        method: the solver.
        pattern: a key of :data:`PATTERNS`.
        sequential: sequential statistics or not.
        seed: the run's seed.

    Returns:
        The :class:`Row` and the pruned copy.
    """
    model = copy.deepcopy(dense)
    kwargs, _ = PATTERNS[pattern]
    start, cpu = time.perf_counter(), time.process_time()
    l0prune.prune(model, calibration, method=method, targets=TARGETS, sequential=sequential,
                  seed=seed, progress=False, **kwargs)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    shown = None if method == "magnitude" else sequential
    return Row(method, pattern, shown, perplexity(model, heldout), _sparsity(model), seconds,
               cpu_seconds), model


def run(lm: BuiltinLM, *, methods: Sequence[str] = METHODS,
        patterns: Sequence[str] = tuple(PATTERNS), nsamples: int = 128,
        heldout_windows: int = 256, seed: int = 0,
        log: Callable[[str], None] | None = None) -> tuple[list[Row], float]:
    """Every method at every pattern, sequential and not, on the built-in LM.

    Args:
        lm: the built-in LM (:func:`l0prune.demo.lm.builtin_lm`).
        methods: solvers to run.
        patterns: keys of :data:`PATTERNS`.
        nsamples: calibration windows (drawn from the training text with ``seed``).
        heldout_windows: held-out windows for the perplexity (consecutive from the start).
        seed: the calibration draw's and the runs' seed.
        log: ``log(line)`` after each row, or ``None``.

    Returns:
        The rows and the dense model's held-out perplexity.

    Example:
        >>> rows, dense = run(builtin_lm("tiny"), methods=["wanda"],
        ...                   patterns=["50 %"])  # doctest: +SKIP
    """
    calibration = lm.batches("train", nsamples, seed=seed, batch_size=8)
    heldout = lm.batches("heldout", heldout_windows, batch_size=16)
    dense = lm.model
    dense_perplexity = perplexity(dense, heldout)
    rows = []
    for pattern in patterns:
        for method in methods:
            for sequential in ((False,) if method == "magnitude" else (True, False)):
                row, _ = prune_once(dense, calibration, heldout, method, pattern, sequential,
                                    seed)
                rows.append(row)
                if log is not None:
                    log(_row_line(row, dense_perplexity))
    return rows, dense_perplexity


def _sequential_text(row: Row) -> str:
    return "-" if row.sequential is None else ("yes" if row.sequential else "no")


def _row_line(row: Row, dense: float) -> str:
    return (f"{row.pattern} {row.method} sequential {_sequential_text(row)}: perplexity "
            f"{row.perplexity:.2f} ({row.perplexity / dense:.3f} x dense), "
            f"{row.seconds:.1f} s, {row.cpu_seconds:.1f} CPU s")


def _find(rows: Sequence[Row], method: str, pattern: str, sequential: bool | None):
    for row in rows:
        if (row.method, row.pattern, row.sequential) == (method, pattern, sequential):
            return row
    return None


def comparisons(rows: Sequence[Row]) -> list[str]:
    """Lines saying, per pattern and statistics setting, whether ADMM's perplexity is below
    OBS's (the rows themselves decide; nothing is assumed)."""
    lines = []
    for pattern in dict.fromkeys(r.pattern for r in rows):
        for sequential in (True, False):
            admm = _find(rows, "admm", pattern, sequential)
            obs = _find(rows, "obs", pattern, sequential)
            if admm is None or obs is None:
                continue
            verdict = "below" if admm.perplexity < obs.perplexity else "not below"
            lines.append(
                f"- {pattern}, sequential {'yes' if sequential else 'no'}: ADMM "
                f"{admm.perplexity:.2f} is {verdict} OBS {obs.perplexity:.2f} "
                f"({admm.perplexity / obs.perplexity:.3f}x)"
            )
    return lines


def table(rows: Sequence[Row], dense_perplexity: float, description: str) -> str:
    """The markdown table: one line per method and statistics setting, per pattern the
    perplexity and the seconds.

    Example:
        >>> print(table([Row("obs", "50 %", True, 30.0, 0.5, 2.0, 1.9)], 20.0, "LM"))
        ... # doctest: +ELLIPSIS
        LM
        ...
        | obs | yes | 30.00 | 1.9 |
    """
    patterns = list(dict.fromkeys(r.pattern for r in rows))
    lines = [
        description,
        "",
        f"Dense held-out perplexity: {dense_perplexity:.2f}. Per pattern: perplexity after "
        "pruning, and CPU seconds of the prune call (statistics and solves; on a shared machine "
        "CPU seconds vary less than wall-clock ones).",
        "",
        "| method | sequential | " + " | ".join(f"{p} ppl | {p} CPU s" for p in patterns)
        + " |",
        "|---|---|" + "---:|---:|" * len(patterns),
    ]
    for key in dict.fromkeys((r.method, r.sequential) for r in rows):
        cells = []
        for pattern in patterns:
            row = _find(rows, key[0], pattern, key[1])
            cells += ["-", "-"] if row is None else [f"{row.perplexity:.2f}",
                                                    f"{row.cpu_seconds:.1f}"]
        sequential = "-" if key[1] is None else ("yes" if key[1] else "no")
        lines.append(f"| {key[0]} | {sequential} | " + " | ".join(cells) + " |")
    found = comparisons(rows)
    if found:
        lines += ["", "ADMM against OBS:", *found]
    return "\n".join(lines)


def plot(rows: Sequence[Row], dense_perplexity: float, path: str | Path, title: str) -> None:
    """The perplexity increase over the dense model (%, log scale) per method and pattern:
    50 %, 70 %, 90 % joined by a line, 2:4 apart on the right; solid: sequential statistics,
    dashed: not."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.add_subplot()
    colors = dict(zip(METHODS, ("tab:gray", "tab:green", "tab:blue", "tab:orange", "tab:red"),
                      strict=True))
    position = {"50 %": 0, "70 %": 1, "90 %": 2, "2:4": 3.2}
    floor = 1e-3  # a run no worse than dense would have no place on a log scale

    def increase(row: Row) -> float:
        return max(100 * (row.perplexity / dense_perplexity - 1), floor)

    for key in dict.fromkeys((r.method, r.sequential) for r in rows):
        method, sequential = key
        label = method if sequential is None else \
            f"{method}, {'sequential' if sequential else 'not sequential'}"
        style = {"color": colors.get(method, "black"), "marker": "o" if sequential is not False
                 else "s", "fillstyle": "full" if sequential is not False else "none"}
        mine = [r for r in rows if (r.method, r.sequential) == key]
        line = sorted((position[r.pattern], increase(r)) for r in mine if r.pattern != "2:4")
        if line:
            axes.plot(*zip(*line, strict=True), "--" if sequential is False else "-",
                      label=label, **style)
        for r in mine:
            if r.pattern == "2:4":
                axes.plot([position["2:4"]], [increase(r)], linestyle="none",
                          label=None if line else label, **style)
    axes.set_yscale("log")
    axes.set_xticks(list(position.values()), list(position))
    axes.set_xlabel("sparsity of the blocks' linear layers")
    axes.set_ylabel(f"held-out perplexity over dense ({dense_perplexity:.2f}), % increase")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, ncol=2)
    axes.grid(True, which="major", axis="y", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def write_json(rows: Sequence[Row], dense_perplexity: float, path: str | Path) -> None:
    """The rows and the dense perplexity as JSON (to redraw the plot or compare runs)."""
    import json
    from dataclasses import asdict

    Path(path).write_text(json.dumps({"dense_perplexity": dense_perplexity,
                                      "rows": [asdict(r) for r in rows]}, indent=1) + "\n")


def _description(lm: BuiltinLM, nsamples: int, heldout_windows: int) -> str:
    info, config = lm.info, lm.info["config"]
    return (
        f"Built-in LM (l0prune.demo.lm: LLaMA-style, hidden {config['hidden']}, {config['blocks']} "
        f"blocks, vocabulary {config['vocab_size']}, {info['parameters'] / 1e6:.2f}M "
        f"parameters, trained on the standard library's docstrings of Python {info['python']}; "
        f"held-out perplexity {info['heldout_perplexity']:.2f} on all {info['heldout_windows']}"
        f" held-out windows, unigram {info['unigram_perplexity']:.1f}). Calibration: "
        f"{nsamples} windows of {info['seqlen']} tokens of the training text; perplexity on "
        f"the first {heldout_windows} held-out windows. torch threads: "
        f"{torch.get_num_threads()}."
    )


def main(argv: list[str] | None = None) -> None:
    """Run the LM benchmark, print the table, write it to ``--out`` and the plot to ``--plot``.

    Example:
        >>> main(["--quick", "--out", "/tmp/lm.md", "--plot", "/tmp/lm.png"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(prog="l0prune bench lm")
    parser.add_argument("--quick", action="store_true",
                        help="32 calibration windows, 64 held-out windows")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="the built-in LM's size (default)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--patterns", nargs="+", choices=list(PATTERNS),
                        default=list(PATTERNS))
    parser.add_argument("--nsamples", type=int, help="calibration windows (128)")
    parser.add_argument("--heldout-windows", type=int, help="held-out windows (256)")
    parser.add_argument("--out", default="bench-results/lm.md", help="markdown output file")
    parser.add_argument("--plot", default="bench-results/lm.png", help="plot output file")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    nsamples = args.nsamples or (32 if args.quick else 128)
    heldout_windows = args.heldout_windows or (64 if args.quick else 256)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    lm = builtin_lm(args.size, log=log)
    rows, dense = run(lm, methods=args.methods, patterns=args.patterns, nsamples=nsamples,
                      heldout_windows=heldout_windows, log=log)
    description = _description(lm, nsamples, heldout_windows)
    text = table(rows, dense, description)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    write_json(rows, dense, out.with_suffix(".json"))
    plot(rows, dense, args.plot, f"built-in LM, {nsamples} calibration windows of "
                                 f"{lm.info['seqlen']} tokens, block by block, one thread")
