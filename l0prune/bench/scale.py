"""The scale-out benchmark: many layer problems solved here, on a local dask cluster and on a
process pool.

``l0prune bench scale [--quick] [--method NAME] [--workers N] [--problems N]
[--out FILE] [--threads N]``

24 layer problems of BERT-base-class shapes (8 each of 384 x 384, 1536 x 384 and 384 x 1536,
out x in; 50 % unstructured), each with a synthetic ``H = A A^T / m + 0.01 I`` whose columns of
``A`` decay geometrically (a decaying spectrum, as real activations give), are solved by
:func:`solvers.many.solve_many`: in this process, on a ``LocalCluster`` of ``--workers``
processes with one thread each, and on a ``ProcessPoolExecutor`` of as many processes. Each
row gives the wall time, the speedup over this process, and whether the solutions are the
in-process ones bit for bit. The per-task overhead (serialisation and scheduling) is the wall
time per task of 200 tiny problems (8 x 16) on each executor, less that here. The cluster and
the pool are started before the clock starts. The table is printed and written as markdown
(default ``bench-results/scale.md``).

``--llm-shapes``: instead, one layer each of a 7B LLaMA-class model's shapes (4096 x 4096,
11008 x 4096, 4096 x 11008) in this process with one thread: OBS in full, and on 4096 x 4096
the eigendecomposition alone and ADMM at two iteration caps (its iterations and its refit's
alike), whose difference gives the time per step and the rest the fixed part, from which the
README estimates a whole model on N workers. The caps are high enough that ADMM's own support
beats the safeguard's candidates (the table says which support was returned): a candidate that
wins gets a full refit, which would count as fixed time. These figures are CPU seconds of this
process (and wall seconds next to them): on a shared machine, what a solve costs a core of its
own.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import time
from pathlib import Path

import torch

from solvers import LayerProblem
from solvers.many import solve_many

from . import add_threads_option, use_threads

__all__ = ["main", "problems", "synthetic_H"]

BERT_SHAPES = ((384, 384), (1536, 384), (384, 1536))
LLM_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))


def synthetic_H(n: int, seed: int, rank: int = 256, decay: float = 0.98) -> torch.Tensor:
    """``A A^T / rank + 0.01 I`` with ``A`` (n x rank) Gaussian, column ``j`` scaled by
    ``decay^j``: a PSD second moment with a decaying spectrum, made in ``n^2 rank`` flops."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, rank, generator=g) * decay ** torch.arange(rank, dtype=torch.float32)
    return A @ A.T / rank + 0.01 * torch.eye(n)


def problems(count: int, shapes=BERT_SHAPES, sparsity: float = 0.5) -> list[LayerProblem]:
    """``count`` problems cycling through ``shapes``; layers with one input width share ``H``
    as a block's layers share their inputs."""
    moments = {}
    out = []
    for i in range(count):
        rows, cols = shapes[i % len(shapes)]
        key = (cols, i // len(shapes))
        if key not in moments:
            moments[key] = synthetic_H(cols, seed=i // len(shapes))
        H = moments[key]
        W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1000 + i))
        out.append(LayerProblem(W, H, sparsity=sparsity))
    return out


def _timed(run) -> tuple[float, list]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def _same(a, b) -> bool:
    return all(torch.equal(x.weight, y.weight) and torch.equal(x.mask, y.mask)
               for x, y in zip(a, b, strict=True))


def scale_table(count: int, method: str, workers: int, options: dict) -> str:
    """The markdown table of the scale benchmark (see the module docstring)."""
    from l0prune.pipeline.executors import local_cluster

    batch = problems(count)
    tiny = [LayerProblem(torch.randn(8, 16, generator=torch.Generator().manual_seed(i)), None,
                         sparsity=0.5) for i in range(200)]
    cpu = time.process_time()
    here, expected = _timed(lambda: solve_many(batch, method, progress=False, **options))
    share = (time.process_time() - cpu) / here
    tiny_here, _ = _timed(lambda: solve_many(tiny, "magnitude", progress=False))
    rows = [("this process, 1 thread", here, True, 0.0)]
    iterations = [s.info.get("iterations") for s in expected]
    with local_cluster(workers) as client:  # as l0prune's --workers starts one
        solve_many(tiny[:4], "magnitude", client, progress=False)  # workers warm
        wall, found = _timed(lambda: solve_many(batch, method, client, progress=False,
                                                **options))
        tiny_wall, _ = _timed(lambda: solve_many(tiny, "magnitude", client, progress=False))
        rows.append((f"dask LocalCluster, {workers} workers x 1 thread", wall,
                     _same(found, expected), (tiny_wall - tiny_here) / len(tiny)))
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=context) as pool:
        solve_many(tiny[:workers], "magnitude", pool, progress=False)
        wall, found = _timed(lambda: solve_many(batch, method, pool, progress=False, **options))
        tiny_wall, _ = _timed(lambda: solve_many(tiny, "magnitude", pool, progress=False))
        rows.append((f"ProcessPoolExecutor, {workers} processes x 1 thread", wall,
                     _same(found, expected), (tiny_wall - tiny_here) / len(tiny)))
    lines = [
        f"{count} problems ({', '.join(f'{r} x {c}' for r, c in BERT_SHAPES)}; 50 % "
        f"unstructured; {method}"
        + (f", mean {sum(iterations) / len(iterations):.0f} iterations" if iterations[0] else "")
        + ")",
        "",
        "| where | wall s | speedup | identical to this process | overhead per task, ms |",
        "|---|---:|---:|---|---:|",
    ]
    for name, wall, same, overhead in rows:
        lines.append(f"| {name} | {wall:.2f} | {here / wall:.2f}x | {'yes' if same else 'NO'} "
                     f"| {overhead * 1e3:.1f} |")
    lines += ["", f"The in-process run had {share:.0%} of a core (its CPU seconds over its wall "
              "seconds): what the machine's other work left it."]
    return "\n".join(lines) + "\n"


def _cpu_timed(run) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``run()`` in this process: on a shared machine the CPU time
    of a one-thread solve is what it costs a core of its own."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def llm_table(caps: tuple[int, int]) -> str:
    """One layer each at the 7B shapes: OBS in full; on 4096 x 4096 the eigendecomposition
    alone, and ADMM at two caps ``n`` on both its iterations and its refit's PCG iterations,
    ``t(n) = fixed + n * step`` (CPU seconds; ``fixed``: the eigendecomposition, the safeguard's
    two candidate refits, set-up)."""
    lines = ["| layer (out x in) | OBS CPU s | OBS wall s |", "|---|---:|---:|"]
    for rows, cols in LLM_SHAPES:
        problem = problems(1, ((rows, cols),))[0]
        wall, cpu = _cpu_timed(lambda p=problem: solve_many([p], "obs", progress=False))
        lines.append(f"| {rows} x {cols} | {cpu:.1f} | {wall:.1f} |")
        print(lines[-1], flush=True)
    problem = problems(1, ((4096, 4096),))[0]
    eigh_wall, eigh_cpu = _cpu_timed(lambda: problem.scaled.eigh)
    times, ends = [], []
    for cap in caps:
        problem = problems(1, ((4096, 4096),))[0]
        found: list = []
        times.append(_cpu_timed(lambda p=problem, c=cap, out=found: out.extend(solve_many(
            [p], "admm", progress=False, max_iter=c, refit_iter=c, swap_rounds=0))))
        ends.append(found[0].info.get("fallback") or "ADMM's own")
        print(f"ADMM at {cap}: {times[-1]}, support kept: {ends[-1]}", flush=True)
    step = (times[1][1] - times[0][1]) / (caps[1] - caps[0])
    lines += ["", "| ADMM, 4096 x 4096 | CPU s | wall s | support returned |",
              "|---|---:|---:|---|", f"| eigendecomposition of H~ alone | {eigh_cpu:.1f} | "
              f"{eigh_wall:.1f} | |"]
    lines += [f"| {cap} iterations + {cap} refit iterations | {cpu:.1f} | {wall:.1f} | {end} |"
              for cap, (wall, cpu), end in zip(caps, times, ends, strict=True)]
    lines += [f"| per step (one iteration + one refit iteration) | {step:.2f} | | |",
              f"| fixed (eigendecomposition, safeguard refits, set-up) | "
              f"{times[0][1] - caps[0] * step:.1f} | | |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with command-line ``argv``."""
    parser = argparse.ArgumentParser(prog="l0prune bench scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 problems, ADMM at 30 iterations")
    parser.add_argument("--method", default="admm", help="the solver (default: admm)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default: 2)")
    parser.add_argument("--problems", type=int, default=24, help="problems (default: 24)")
    parser.add_argument("--llm-shapes", action="store_true",
                        help="time one layer each of the 7B shapes instead")
    parser.add_argument("--out", help="markdown file (default: bench-results/scale.md, or "
                        "bench-results/scale-llm.md)")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    if args.llm_shapes:
        text = llm_table((10, 30))
        default = "bench-results/scale-llm.md"
    else:
        count = 6 if args.quick else args.problems
        options = {"max_iter": 30} if args.quick and args.method == "admm" else {}
        text = scale_table(count, args.method, args.workers, options)
        default = "bench-results/scale.md"
    header = (f"torch threads in this process: {torch.get_num_threads()}; workers run one "
              "each\n\n")
    print(header + text)
    out = Path(args.out or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + text)
