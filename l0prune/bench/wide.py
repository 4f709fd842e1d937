"""The wide-layer benchmark: block-diagonal statistics against the full ``H``, the full-size pitch
network end to end, and the solvers' working memory that the memory check counts.

``l0prune bench wide [--quick] [--frames N] [--methods M ...] [--h-blocks B ...] [--threads N]
[--out FILE]``: CREPE's tiny layout trained on synthetic tones (:func:`l0prune.bench.pitch.
trained_pitch_net`, cached; its second convolution unfolds to 8,192 columns), pruned at 90 %
unstructured (sequential, the default) from ``--frames`` calibration frames by each method with
the full ``H`` and with ``h_block=B`` (a method that does not read ``H``, Wanda or magnitude,
once): per layer, the relative output error against the dense model on 256 held-out frames
(``||Y - Y_0||^2 / ||Y_0||^2``, bias left out) and the one the run reports (under the
statistics it took); for the network, the relative error of its outputs on the same frames
(:func:`output_error`) and the raw pitch accuracy on 2,048 held-out tones; and the run's time.
A second table splits one layer's budget over its blocks two ways, on the statistics of the
dense model: in proportion to the blocks' sizes (what ``h_block`` does) and by the blocks'
error curves as :func:`l0prune.pipeline.allocation.spread` spreads a budget across layers, each
judged by the layer's relative error under its full ``H``.

``l0prune bench wide --full --method M --h-block B [--frames N]``: the full-size layout (22M
parameters, a second convolution of 1,024 channels x 64 taps, 65,536 columns) pruned end to end
at 90 % in this process (random-init: the shapes and the memory are what count): the wall time,
the peak resident memory (``ru_maxrss``), the memory check's estimate for the run, and on
held-out frames the network's output error and how often its pitch bin is the dense one's.

``l0prune bench wide --working``: the working memory of each method's solve, as
:data:`l0prune.pipeline.footprint.WORKING` records it: per method and layer shape, a fresh
process solves one layer at 90 % from a float64 ``H`` and reports its peak resident memory above
what it held before, and what it still holds with the problem alive, per ``b^2`` and per weight.

One torch thread unless ``--threads`` says otherwise; tables are printed and written as
markdown (default ``bench-results/wide.md``, ``wide-full.md``, ``wide-working.md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import l0prune
from l0prune.model.statistics import collect, discover, input_groups
from l0prune.model.targets import Target, select_targets
from l0prune.pipeline.allocation import Curve, spread
from l0prune.pipeline.footprint import column_plan, estimate
from l0prune.pipeline.solves import block_budgets, target_problems
from solvers import Unstructured, method_info, solve

from . import add_threads_option, use_threads
from .pitch import Tones, frames, pitch_accuracy, pitch_net, tones, trained_pitch_net

__all__ = ["layer_errors", "main", "output_error", "same_bin"]

SPARSITY = 0.9
#: Sparsities of the blocks' error curves (the allocation table).
CURVE_GRID = (0.0, 0.5, 0.7, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98)


def _layer_outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Each named layer's output less its bias, on ``x``."""
    modules = dict(model.named_modules())
    found: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            bias = module.bias.detach().reshape(1, -1, *([1] * (output.ndim - 2)))
            found[name] = (output - bias).double()

        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


def layer_errors(pruned: nn.Module, dense: nn.Module, x: torch.Tensor,
                 names: list[str]) -> dict[str, float]:
    """Each layer's ``||Y - Y_0||^2 / ||Y_0||^2`` on ``x``: its output in ``pruned`` against the
    dense model's (bias left out), every earlier layer as it is in each.

    Example:
        >>> net = pitch_net("tiny")
        >>> layer_errors(net, net, frames(2), ["6"])
        {'6': 0.0}
    """
    mine, theirs = _layer_outputs(pruned, x, names), _layer_outputs(dense, x, names)
    return {n: float((mine[n] - theirs[n]).square().sum() / theirs[n].square().sum())
            for n in names}


def output_error(pruned: nn.Module, dense: nn.Module, x: torch.Tensor) -> float:
    """The relative error of the pruned network's outputs against the dense one's on ``x``,
    ``||Y - Y_0||^2 / ||Y_0 - mean(Y_0)||^2`` with the mean over the frames.

    Measured against the outputs' spread, not ``||Y_0||^2``: a part of the output that does
    not depend on the input (the biases carried through, nearly all of a random-init pitch
    network's features) would make any error look negligible.

    Example:
        >>> net = pitch_net("tiny")
        >>> output_error(net, net, frames(3))
        0.0
    """
    with torch.no_grad():
        y, y0 = pruned(x).double(), dense(x).double()
    return float((y - y0).square().sum() / (y0 - y0.mean(0)).square().sum())


def same_bin(pruned: nn.Module, dense: nn.Module, x: torch.Tensor) -> float:
    """The fraction of frames whose most likely pitch bin is the dense network's.

    Example:
        >>> net = pitch_net("tiny")
        >>> same_bin(net, net, frames(3))
        1.0
    """
    with torch.no_grad():
        return float((pruned(x).argmax(1) == dense(x).argmax(1)).double().mean())


# --- the tiny network: block sizes against the full H ------------------------------------------

def _widths_for(method: str, widths: list[int | None]) -> list[int | None]:
    """The full ``H`` alone for a method that does not read it (``h_block`` changes nothing)."""
    return widths if method_info(method).statistics == "full" else [None]


def _quality(model: nn.Module, methods, widths, data: list[torch.Tensor],
             held: Tones) -> list[dict]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    x = held.frames[:256]
    rows = []
    for method in methods:
        for width in _widths_for(method, widths):
            pruned = copy.deepcopy(model)
            start = time.perf_counter()
            report = l0prune.prune(pruned, data, sparsity=SPARSITY, method=method,
                                   h_block=width, progress=False)
            seconds = time.perf_counter() - start
            rows.append({"method": method, "h_block": width, "seconds": seconds,
                         "reported": {r.name: r.relative_error for r in report.layers},
                         "held_out": layer_errors(pruned, model, x, names),
                         "output": output_error(pruned, model, x),
                         "accuracy": pitch_accuracy(pruned, held)})
    return rows


def _quality_table(rows: list[dict], dense_accuracy: float, count: int, held: int) -> list[str]:
    names = list(rows[0]["reported"])
    lines = [
        "## The tiny network: block-diagonal statistics against the full H", "",
        f"CREPE's tiny layout trained on synthetic tones, {SPARSITY:.0%} unstructured, "
        f"sequential, {count} calibration frames; per layer the relative output error against "
        "the dense model on 256 held-out frames (the run's own figure, under the statistics it "
        "took, in brackets); the network's relative output error on the same frames (against "
        "the spread of the dense outputs); the raw pitch accuracy on "
        f"{held:,} held-out tones (dense {dense_accuracy:.3f}). Wanda and magnitude read no "
        "full H, so h_block does not change them: one row each.", "",
        "| method | h_block | " + " | ".join(f"layer {n}" for n in names)
        + " | network | accuracy | seconds |",
        "|---|---:|" + "---:|" * len(names) + "---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r['held_out'][n]:.4f} ({r['reported'][n]:.4f})" for n in names]
        lines.append(f"| {r['method']} | {r['h_block'] or 'full H'} | " + " | ".join(cells)
                     + f" | {r['output']:.4f} | {r['accuracy']:.3f} | {r['seconds']:.1f} |")
    return lines + [""]


def _block_problems(model: nn.Module, layer: str, data: list[torch.Tensor], width: int):
    """The layer's dense weight, its full ``H`` and its block problems, on the dense model's
    statistics."""
    cpu = torch.device("cpu")
    discovery = discover(model, data[0], cpu)
    target = select_targets(model, discovery.order, layer)[0]
    groups = input_groups([target], discovery)
    full = collect(model, data, groups, cpu, discovery)[layer].H
    plan = column_plan([target], Unstructured(), width, "full")
    blocked = collect(model, data, groups, cpu, discovery, blocks=plan)[layer].H
    W = target.matrix(target.module.weight.detach())
    return target, W[0], full[0], target_problems(W, blocked, None, None)[0]


def _curve_counts(problems, method: str, kept: int) -> list[int]:
    """Each block's count by :func:`spread` of the blocks' error curves (each error the
    block's share of the layer's relative error under the block-diagonal ``H``)."""
    total = sum(p.output_error(p.W)[1] for p in problems)
    curves = []
    for j, p in enumerate(problems):
        top = p.shape[0] * p.shape[1]
        counts = sorted({round((1 - s) * top) for s in CURVE_GRID}, reverse=True)
        errors = [p.output_error(solve(p.with_budget(Unstructured(k=c)), method).weight)[0]
                  / total for c in counts]
        curves.append(Curve(Target(f"block {j}", nn.Linear(p.shape[1], p.shape[0])),
                            Unstructured(), counts, errors))
    budgets = spread(curves, kept)
    return [budgets[f"block {j}"].k for j in range(len(problems))]


def _allocation(model: nn.Module, methods, widths, data: list[torch.Tensor],
                layer: str = "6") -> list[dict]:
    rows = []
    for width in widths:
        target, W, H, problems = _block_problems(model, layer, data, width)
        kept = round((1 - SPARSITY) * W.numel())
        uniform = [b.k for b in block_budgets(Unstructured(k=kept), W.shape[0],
                                               [p.shape[1] for p in problems])]
        for method in methods:
            row = {"method": method, "h_block": width, "blocks": len(problems),
                   "counts": uniform}
            curve = row["curve counts"] = _curve_counts(problems, method, kept)
            for name, counts in (("uniform", uniform), ("curves", curve)):
                weight = torch.cat([solve(p.with_budget(Unstructured(k=c)), method).weight
                                    for p, c in zip(problems, counts, strict=True)], dim=1)
                D = (weight - W).double()
                row[name] = float(((D @ H) * D).sum() / ((W.double() @ H) * W.double()).sum())
                row[f"{name} kept"] = sum(counts)
            rows.append(row)
    return rows


def _allocation_table(rows: list[dict], layer: str = "6") -> list[str]:
    lines = [
        f"## Splitting layer {layer}'s budget over its blocks", "",
        f"{SPARSITY:.0%} unstructured on the dense model's statistics; the layer's relative "
        "error under its full H when each block keeps the same fraction (what h_block does) "
        "and when the blocks' error curves spread the count as across layers.", "",
        "| method | h_block | blocks | same fraction | by error curves | curves / same | "
        "kept per block by the curves (same fraction) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        counts = ", ".join(map(str, r["curve counts"]))
        lines.append(f"| {r['method']} | {r['h_block']} | {r['blocks']} | {r['uniform']:.4f} | "
                     f"{r['curves']:.4f} | {r['curves'] / r['uniform']:.3f} | {counts} "
                     f"({', '.join(map(str, r['counts']))}) |")
    return lines + [""]


# --- the full-size network end to end ------------------------------------------------------------

def _full(method: str, width: int | None, count: int) -> list[str]:
    model = pitch_net("full")
    data = list(frames(count).split(32))
    held = frames(64, seed=1)
    cpu = torch.device("cpu")
    discovery = discover(model, data[0], cpu)
    targets = select_targets(model, discovery.order)
    kind = "none" if method == "magnitude" else "diagonal" if method == "wanda" else "full"
    planned = estimate(targets, discovery, statistics=kind, method=method, sequential=True,
                       fixed=True, batches=len(data),
                       blocks=column_plan(targets, Unstructured(), width, kind))
    start = time.perf_counter()
    report = l0prune.prune(model, data, sparsity=SPARSITY, method=method, h_block=width,
                           progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dense = pitch_net("full")
    error, agree = output_error(model, dense, held), same_bin(model, dense, held)
    lines = [
        "## The full-size pitch network end to end", "",
        f"22M parameters, 90 % unstructured, sequential, {count} calibration frames in batches "
        f"of 32; method {method}, h_block {width or 'none (the full H)'}.", "",
        "| seconds | peak resident memory | the check's estimate | network error | same bin |",
        "|---:|---:|---:|---:|---:|",
        f"| {seconds:.0f} | {peak / 1e9:.2f} GB | {planned.total / 1e9:.2f} GB | {error:.4f} | "
        f"{agree:.1%} |", "",
        "| layer | weight | kept | reported error | seconds |", "|---|---|---:|---:|---:|",
    ]
    for r in report.layers:
        lines.append(f"| {r.name} | {'x'.join(map(str, r.shape))} | {r.kept:,} | "
                     f"{r.relative_error:.4f} | {r.seconds:.1f} |")
    return lines + [""]


# --- the solvers' working memory ---------------------------------------------------------------

def _resident() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize()


def _solve_once(method: str, cols: int, out: int) -> dict:
    """One solve from a float64 ``H`` (built without a larger peak first), in this process."""
    g = torch.Generator().manual_seed(0)
    H = torch.zeros(cols, cols, dtype=torch.float64)
    for _ in range(8):
        X = torch.randn(cols // 4, cols, generator=g)
        H += (X.T @ X).double()
    H = (H / (2 * cols))[None]
    W = torch.randn(1, out, cols, generator=g)
    del X
    base = _resident()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kind = {"magnitude": None, "wanda": H.diagonal(dim1=1, dim2=2)}.get(method, H)
    problem = target_problems(W, kind, None, None, check_psd=False)[0][0]
    solve(problem.with_budget(Unstructured(k=round((1 - SPARSITY) * out * cols))), method)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak": peak - max(base, peak_before), "kept": _resident() - base}


def _working(methods) -> list[str]:
    shapes = ((4096, 128), (2048, 4096))
    found = {}
    for method in methods:
        for cols, out in shapes:
            done = subprocess.run(
                [sys.executable, "-m", "l0prune.bench.wide", "--solve-once", method, str(cols),
                 str(out), "--threads", str(torch.get_num_threads())],
                capture_output=True, text=True, check=True)
            found[method, cols, out] = json.loads(done.stdout)
    lines = [
        "## The solvers' working memory", "",
        f"One layer solved at {SPARSITY:.0%} in a fresh process: the peak resident memory above "
        "its float64 H, and what it holds after the solve with the problem alive, per b^2 "
        "(b the columns) and, for the layer with more rows, per weight beyond the narrow "
        "layer's b^2 figure.", "",
        "| method | peak / b^2 (4,096 in, 128 out) | kept / b^2 | "
        "peak / weight (2,048 in, 4,096 out) | kept / weight |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in methods:
        a, b = found[method, 4096, 128], found[method, 2048, 4096]
        per_square = (a["peak"] / 4096**2, a["kept"] / 4096**2)
        per_weight = ((b["peak"] - per_square[0] * 2048**2) / (2048 * 4096),
                      (b["kept"] - per_square[1] * 2048**2) / (2048 * 4096))
        lines.append(f"| {method} | {per_square[0]:.1f} | {per_square[1]:.1f} | "
                     f"{per_weight[0]:.1f} | {per_weight[1]:.1f} |")
    return lines + [""]


def _tiny(methods: list[str], widths: list[int], count: int) -> list[str]:
    """The tiny network's tables: each method with the full ``H`` and each width, and the
    budget's split over layer 6's blocks."""
    model = trained_pitch_net("tiny")
    data = list(tones(count, seed=3).frames.split(32))
    held = tones(2048, seed=7)
    rows = _quality(model, methods, [None, *widths], data, held)
    lines = _quality_table(rows, pitch_accuracy(model, held), count, len(held.bins))
    full = [m for m in methods if method_info(m).statistics == "full"]
    return lines + _allocation_table(_allocation(model, full, widths, data)) if full else lines


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="l0prune bench wide")
    parser.add_argument("--quick", action="store_true",
                        help="32 frames, OBS, blocks of 2048 (a smoke run)")
    parser.add_argument("--frames", type=int, default=128, help="calibration frames")
    parser.add_argument("--methods", nargs="+", default=["obs", "admm", "wanda", "magnitude"])
    parser.add_argument("--h-blocks", type=int, nargs="+", default=[4096, 2048, 1024])
    parser.add_argument("--full", action="store_true", help="the full-size network, one run")
    parser.add_argument("--method", default="obs", help="--full: the method")
    parser.add_argument("--h-block", type=int, help="--full: the blocks' width")
    parser.add_argument("--working", action="store_true", help="the solvers' working memory")
    parser.add_argument("--solve-once", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--out")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads if args.threads is not None else 1)
    if args.solve_once:
        method, cols, out = args.solve_once
        print(json.dumps(_solve_once(method, int(cols), int(out))))
        return
    command = shlex.join(["l0prune", "bench", "wide", *(argv or [])])
    header = [f"Command: `{command}`; torch threads: {torch.get_num_threads()}.", ""]
    if args.working:
        lines, name = _working(["admm", "iht", "obs", "wanda", "magnitude"]), "wide-working"
    elif args.full:
        lines, name = _full(args.method, args.h_block, args.frames), "wide-full"
    else:
        count, methods, widths = ((32, ["obs"], [2048]) if args.quick
                                  else (args.frames, args.methods, args.h_blocks))
        lines, name = _tiny(methods, widths, count), "wide"
    text = "\n".join(["# Wide layers", "", *header, *lines])
    print(text)
    out = Path(args.out or f"bench-results/{name}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
