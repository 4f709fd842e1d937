"""The device benchmark: OBS and ADMM on LLM-sized layers, on CUDA and on the CPU, compared.

``l0prune bench gpu [--quick] [--devices cpu cuda] [--out FILE] [--threads N]``

Solves a 4096 x 4096 and an 11008 x 4096 layer (an LLM's attention and MLP shapes; ``--quick``:
256 x 256 and 688 x 256) with synthetic activation-like ``H``
(:func:`~l0prune.bench.layers.synthetic_layer`) at 50 % unstructured sparsity, with OBS and ADMM
(default schedule), on every device given (default: the CPU, and CUDA when present). Problems
are float32 on their device; the eigendecomposition runs in float64 on the CPU and moves to the
device (:class:`solvers.scaling.Scaled`). For each layer and method it reports the seconds per
device and, against the first device, the fraction of the support that agrees and the ratio of
relative errors; it checks that the supports agree to at least 99 % and the errors to within
1 %, and exits with status 1 when they do not. A table is printed and written as markdown
(default ``bench-results/gpu.md``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from solvers import LayerProblem, solve

from . import add_threads_option, use_threads
from .layers import synthetic_layer

__all__ = ["SIZES", "QUICK_SIZES", "agreement", "main", "run"]

SIZES = [(4096, 4096), (11008, 4096)]
QUICK_SIZES = [(256, 256), (688, 256)]
METHODS = ("obs", "admm")
MIN_AGREEMENT = 0.99
MAX_ERROR_GAP = 0.01


def agreement(mask: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of ``reference``'s kept weights that ``mask`` keeps too (same kept count)."""
    kept = int(reference.sum())
    return float((mask.cpu() & reference.cpu()).sum()) / kept if kept else 1.0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(sizes, devices, methods=METHODS, sparsity: float = 0.5) -> list[dict]:
    """Solve every layer with every method on every device.

    Returns:
        One dict per (layer, method, device): ``layer``, ``method``, ``device``, ``seconds``
        (wall, including the problem's factorisations), ``relative_error``, ``agreement`` and
        ``error_ratio`` against the first device (1 on the first).
    """
    rows = []
    for out, inp in sizes:
        W, H = synthetic_layer(out, inp)
        for method in methods:
            first = None
            for device in devices:
                _synchronize(device)
                start = time.perf_counter()
                problem = LayerProblem(W.to(device), H.to(device), sparsity=sparsity)
                solution = solve(problem, method)
                _synchronize(device)
                seconds = time.perf_counter() - start
                if first is None:
                    first = solution
                rows.append({
                    "layer": f"{out}x{inp}", "method": method, "device": str(device),
                    "seconds": seconds, "relative_error": solution.relative_error,
                    "agreement": agreement(solution.mask, first.mask),
                    "error_ratio": solution.relative_error / first.relative_error
                    if first.relative_error > 0 else 1.0,
                })
                print(f"{out}x{inp} {method} {device}: {seconds:.2f} s", file=sys.stderr)
    return rows


def _passes(row: dict) -> bool:
    return row["agreement"] >= MIN_AGREEMENT and abs(row["error_ratio"] - 1) <= MAX_ERROR_GAP


def table(rows: list[dict]) -> str:
    """The markdown table of ``rows``."""
    lines = ["| layer | method | device | seconds | rel. error | support agreement | "
             "error ratio | ok |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['method']} | {r['device']} | {r['seconds']:.2f} | "
            f"{r['relative_error']:.4e} | {r['agreement']:.4f} | {r['error_ratio']:.4f} | "
            f"{'yes' if _passes(r) else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the device benchmark from the command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="l0prune bench gpu",
        description="OBS and ADMM on LLM-sized layers on CUDA and the CPU, compared.",
    )
    parser.add_argument("--quick", action="store_true", help="256x256 and 688x256 layers")
    parser.add_argument("--devices", nargs="+", metavar="DEVICE",
                        help="devices to compare, the first the reference (default: cpu, and "
                             "cuda when available)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu.md"),
                        help="markdown file")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    names = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    try:
        devices = [torch.device(name) for name in names]
    except RuntimeError as err:
        parser.error(f"--devices: {err}")
    missing = [str(d) for d in devices if d.type == "cuda" and not torch.cuda.is_available()]
    if missing:
        parser.error(f"--devices {' '.join(missing)}: no CUDA device is available")
    rows = run(QUICK_SIZES if args.quick else SIZES, devices)
    command = shlex.join(["l0prune", "bench", "gpu", *argv])
    report = "\n".join([
        "# Device benchmark", "",
        f"OBS and ADMM at 50 % unstructured sparsity on {', '.join(map(str, devices))}; "
        f"agreement and error ratio against {devices[0]} (pass: agreement >= {MIN_AGREEMENT}, "
        f"errors within {MAX_ERROR_GAP:.0%}).", "",
        table(rows), "",
        f"- torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA")
        + f"; command: `{command}`", "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    if not all(_passes(r) for r in rows):
        sys.exit(1)
