"""The convolutional network benchmark: a pitch estimator pruned by every method.

``l0prune bench convnet [--quick] [--sparsity S] [--methods M ...] [--frames N] [--threads N]
[--out FILE]``

The network is CREPE's tiny layout (:mod:`l0prune.bench.pitch`: six convolutions with 512- and
64-tap kernels, unfolded inputs up to 8,192 wide, 0.49M parameters), trained here on synthetic
tones (cached). Every convolution is pruned to ``--sparsity`` (90 %) unstructured, from
``--frames`` (128) calibration frames of 1024 samples in batches of 32, sequential statistics
(the default), no finetuning, each method on a fresh copy. A row gives the wall-clock seconds
of :func:`l0prune.prune` at ``--threads`` (1), the seconds spent taking statistics
(:func:`l0prune.model.statistics.collect`) and their share, and the raw pitch accuracy on 2,048
held-out tones (within 50 cents). The table is printed and written as markdown (default
``bench-results/convnet.md``).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import time
from pathlib import Path

import torch

import l0prune
from l0prune.model import statistics

from . import add_threads_option, use_threads
from .pitch import pitch_accuracy, tones, trained_pitch_net

__all__ = ["main", "run"]


def run(model, frames: torch.Tensor, held_out, methods: list[str], sparsity: float,
        threads: int) -> list[tuple[str, float, float, float]]:
    """``(method, seconds, statistics seconds, accuracy)`` per method, each on a fresh copy."""
    calibration = list(frames.split(32))
    spent = [0.0]
    original = statistics.collect

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    rows = []
    for method in methods:
        pruned = copy.deepcopy(model)
        spent[0] = 0.0
        statistics.collect = timed
        for module in _users_of_collect():
            module.collect = timed
        try:
            start = time.perf_counter()
            l0prune.prune(pruned, calibration, sparsity=sparsity, method=method,
                          threads=threads, progress=False)
            seconds = time.perf_counter() - start
        finally:
            statistics.collect = original
            for module in _users_of_collect():
                module.collect = original
        rows.append((method, seconds, spent[0], pitch_accuracy(pruned, held_out)))
    return rows


def _users_of_collect():
    """The modules that call ``collect`` by the name they imported."""
    from l0prune.pipeline import blockwise, layerwise

    return (blockwise, layerwise)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="l0prune bench convnet")
    parser.add_argument("--quick", action="store_true",
                        help="16 frames, 256 held-out tones, magnitude and OBS")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "obs", "admm"])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--out", default="bench-results/convnet.md")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    threads = args.threads if args.threads is not None else 1
    use_threads(threads)
    model = trained_pitch_net("tiny")
    count, held, methods = ((16, 256, ["magnitude", "obs"]) if args.quick
                            else (args.frames, 2048, args.methods))
    held_out = tones(held, seed=7)
    rows = run(model, tones(count, seed=3).frames, held_out, methods, args.sparsity, threads)
    command = shlex.join(["l0prune", "bench", "convnet", *(argv or [])])
    lines = [
        "# A pitch estimator pruned by every method", "",
        f"Command: `{command}`; CREPE's tiny layout trained on synthetic tones; "
        f"{100 * args.sparsity:.0f} % unstructured on every convolution, {count} calibration "
        f"frames; torch threads: {threads}; dense accuracy "
        f"{pitch_accuracy(model, held_out):.3f} on {held} held-out tones.", "",
        "| method | seconds | statistics s | statistics share | accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {m} | {s:.1f} | {st:.1f} | {100 * st / s:.1f} % | {a:.3f} |"
              for m, s, st, a in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
