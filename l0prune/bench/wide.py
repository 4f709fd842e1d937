"""The wide-layer benchmark: block-diagonal statistics against the full ``H``, the full-size pitch
network end to end, and the solvers' working memory that the memory check counts.

``l0prune bench wide [--quick] [--frames N] [--methods M ...] [--h-blocks B ...] [--threads N]
[--out FILE]``: on the random-init pitch estimator of CREPE's tiny layout
(:mod:`l0prune.bench.pitch`, whose second convolution unfolds to 8,192 columns), pruned at 90 %
unstructured (sequential, the default) by each method with the full ``H`` and with
``h_block=B``: per layer, the relative output error against the dense model on held-out frames
(``||Y - Y_0||^2 / ||Y_0||^2``, bias left out) and the one the run reports (under the statistics
it took); for the network, the relative output error against the dense one and how often the
pruned model's pitch bin is the dense one's, on the same held-out frames; and the run's time.
A second table splits one layer's budget over its blocks two ways, on the statistics of the
dense model (the whole network pruned with ``sequential=False``): in proportion to the blocks'
sizes (what ``h_block`` does) and by the blocks' error curves as :func:`l0prune.pipeline.
allocation.spread` spreads a budget across layers, each judged by the layer's relative error
under its full ``H``.

``l0prune bench wide --full --method M --h-block B [--frames N]``: the full-size layout (22M
parameters, a second convolution of 1,024 channels x 64 taps, 65,536 columns) pruned end to end
at 90 % in this process: the wall time, the peak resident memory (``ru_maxrss``), the memory
check's estimate for the run, and the network's output error on held-out frames.

``l0prune bench wide --working``: the working memory of each method's solve, as
:data:`l0prune.pipeline.footprint.WORKING` records it: per method and layer shape, a fresh
process solves one layer at 90 % from a float64 ``H`` and reports its peak resident memory above
what it held before, and what it still holds with the problem alive, per ``b^2`` and per weight.

One torch thread unless ``--threads`` says otherwise; tables are printed and written as
markdown (default ``bench-results/wide.md``, ``wide-full.md``, ``wide-working.md``).
"""

from __future__ import annotations

import argparse
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
from solvers import Unstructured, solve

from . import add_threads_option, use_threads
from .pitch import frames, pitch_net

__all__ = ["layer_errors", "main", "output_error"]

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


def output_error(pruned: nn.Sequential, dense: nn.Sequential,
                 x: torch.Tensor) -> tuple[float, float]:
    """The relative error of the pruned network's features (what its dense head reads: its
    outputs less the head's bias, which is most of a random-init network's output) against the
    dense one's on ``x``, and the fraction of frames whose most likely pitch bin is the dense
    one's.

    Example:
        >>> net = pitch_net("tiny")
        >>> output_error(net, net, frames(3))
        (0.0, 1.0)
    """
    with torch.no_grad():
        f, f0 = pruned[:-1](x).double(), dense[:-1](x).double()
        same = pruned[-1](f.float()).argmax(1) == dense[-1](f0.float()).argmax(1)
    return float((f - f0).square().sum() / f0.square().sum()), float(same.double().mean())


# --- the tiny network: block sizes against the full H ------------------------------------------

def _quality(methods, widths, count: int, held: torch.Tensor) -> list[dict]:
    data = list(frames(count).split(32))
    dense = pitch_net("tiny")
    names = [n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)]
    rows = []
    for method in methods:
        for width in widths:
            model = pitch_net("tiny")
            start = time.perf_counter()
            report = l0prune.prune(model, data, sparsity=SPARSITY, method=method, h_block=width,
                                   progress=False)
            seconds = time.perf_counter() - start
            held_out = layer_errors(model, dense, held, names)
            error, agree = output_error(model, dense, held)
            rows.append({"method": method, "h_block": width, "seconds": seconds,
                         "reported": {r.name: r.relative_error for r in report.layers},
                         "held_out": held_out, "output": error, "agree": agree})
    return rows


def _quality_table(rows: list[dict]) -> list[str]:
    names = list(rows[0]["reported"])
    lines = [
        "## The tiny network: block-diagonal statistics against the full H", "",
        f"{SPARSITY:.0%} unstructured, sequential; per layer the relative output error against "
        "the dense model on held-out frames (the run's own figure, under the statistics it "
        "took, in brackets); the network's: the relative error of the features its dense head "
        "reads, and the frames whose pitch bin is the dense model's.", "",
        "| method | h_block | " + " | ".join(f"layer {n}" for n in names)
        + " | network | same bin | seconds |",
        "|---|---:|" + "---:|" * len(names) + "---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r['held_out'][n]:.4f} ({r['reported'][n]:.4f})" for n in names]
        lines.append(f"| {r['method']} | {r['h_block'] or 'full H'} | " + " | ".join(cells)
                     + f" | {r['output']:.4f} | {r['agree']:.1%} | {r['seconds']:.1f} |")
    return lines + [""]


def _block_problems(layer: str, count: int, width: int):
    """The layer's dense weight, its full ``H`` and its block problems, on the dense model's
    statistics."""
    model = pitch_net("tiny")
    data = list(frames(count).split(32))
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


def _allocation(methods, widths, count: int, layer: str = "6") -> list[dict]:
    rows = []
    for width in widths:
        target, W, H, problems = _block_problems(layer, count, width)
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
    error, agree = output_error(model, pitch_net("full"), held)
    lines = [
        "## The full-size pitch network end to end", "",
        f"22M parameters, 90 % unstructured, sequential, {count} calibration frames in batches "
        f"of 32; method {method}, h_block {width or 'none (the full H)'}.", "",
        "| seconds | peak resident memory | the check's estimate | network | same bin |",
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
        "| method | peak / b^2 (4096 x 128) | kept / b^2 | peak / weight (4096 x 2048) | "
        "kept / weight |",
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


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="l0prune bench wide")
    parser.add_argument("--quick", action="store_true",
                        help="32 frames, OBS, blocks of 2048 (a smoke run)")
    parser.add_argument("--frames", type=int, default=128, help="calibration frames")
    parser.add_argument("--methods", nargs="+", default=["obs", "admm"])
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
        held = frames(256, seed=1)
        lines = _quality_table(_quality(methods, [None, *widths], count, held))
        lines += _allocation_table(_allocation(methods, widths, count))
        name = "wide"
    text = "\n".join(["# Wide layers", "", *header, *lines])
    print(text)
    out = Path(args.out or f"bench-results/{name}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
