"""The whole-prune benchmark: a BERT-class encoder pruned with ADMM and OBS, every layer problem
also solved by each ADMM setting side by side.

``l0prune bench bert [--quick] [--out FILE]``

The model is a randomly initialised ``transformers`` BERT-class encoder (6 blocks, hidden size
384, intermediate 1536: 22.7M parameters; ``--quick``: 2 blocks of hidden size 64) calibrated on
192 random sequences of 128 tokens (``--quick``: 16 of 32), pruned to 50 % unstructured with
sequential statistics on one thread, the encoder's linear layers as targets. Three prunes:

1. ADMM (default schedule), every layer problem also solved by ``schedule="fast"``, the published
   ``schedule="alps"``, the schedule ADMM had before (``rho0 = 0.01``, factors 1.1 / 1.05 / 1.03,
   two checks with no movement) and OBS, side by side in the same process: total solver seconds
   per setting and per-layer output errors (``||X W'^T - X_0 W^T||^2 / ||X_0 W^T||^2``);
2. ADMM alone and 3. OBS alone: the seconds of the whole prune (statistics, solves, masks).

The table is printed and written as markdown (default ``bench-results/bert.md``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from solvers import register_method, solve
from solvers.admm import Schedule

__all__ = ["BEFORE", "SETTINGS", "main", "side_by_side"]

#: ADMM's default schedule before issue 12.
BEFORE = Schedule(0.01, (1.1, 1.05, 1.03), 2)

#: label -> (method, options); the first is what the prune keeps.
SETTINGS = {
    "admm (default)": ("admm", {}),
    "admm (fast)": ("admm", {"schedule": "fast"}),
    "admm (published ALPS)": ("admm", {"schedule": "alps", "swap_rounds": 0}),
    "admm (before)": ("admm", {"schedule": BEFORE}),
    "obs": ("obs", {}),
}


def _model_and_data(quick: bool):
    from transformers import BertConfig, BertModel

    hidden, blocks, sequences, tokens = (64, 2, 16, 32) if quick else (384, 6, 192, 128)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, intermediate_size=4 * hidden,
                        num_hidden_layers=blocks, num_attention_heads=max(1, hidden // 32))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, config.vocab_size, (16, tokens), generator=g)}
            for _ in range(sequences // 16)]
    return BertModel(config).eval(), data


def side_by_side(records: list[dict]):
    """A method that solves each problem with every setting of :data:`SETTINGS`, appends
    ``{label: (output error, seconds)}`` to ``records`` and returns the first setting's result."""

    def method(problem):
        row, kept = {}, None
        for label, (name, options) in SETTINGS.items():
            solution = solve(problem, name, **options)
            change, energy = problem.output_error(solution.weight)
            row[label] = (change / energy if energy > 0 else 0.0, solution.info["seconds"])
            kept = kept or solution
        records.append(row)
        return kept.weight, kept.mask, {k: v for k, v in kept.info.items()
                                        if k not in ("method", "options", "seconds")}

    return method


def _prune(method: str, quick: bool) -> tuple[float, object]:
    import l0prune

    model, data = _model_and_data(quick)
    start = time.perf_counter()
    report = l0prune.prune(model, data, sparsity=0.5, method=method, targets=r".*encoder.*",
                           progress=False, threads=1)
    return time.perf_counter() - start, report


def run(quick: bool) -> tuple[list[dict], dict[str, float]]:
    """The three prunes; returns the side-by-side records and the whole-prune seconds."""
    records: list[dict] = []
    register_method("bench-side-by-side", side_by_side(records))
    _prune("bench-side-by-side", quick)
    whole = {}
    for method in ("admm", "obs"):
        whole[method], report = _prune(method, quick)
        whole[f"{method} solver"] = sum(layer.seconds for layer in report.layers)
    return records, whole


def table(records: list[dict], whole: dict[str, float]) -> str:
    """Solver seconds per setting and per-layer error ratios, then the whole prunes."""
    default = "admm (default)"
    lines = ["| setting | solver seconds, all layers | per-layer error / default's (min / mean / "
             "max) |", "|---|---|---|"]
    for label in SETTINGS:
        ratios = [r[label][0] / r[default][0] for r in records if r[default][0] > 0]
        seconds = sum(r[label][1] for r in records)
        lines.append(f"| {label} | {seconds:.1f} | {min(ratios):.4f} / "
                     f"{sum(ratios) / len(ratios):.4f} / {max(ratios):.4f} |")
    lines += ["", "| whole prune | seconds | solver seconds |", "|---|---|---|"]
    for method in ("admm", "obs"):
        lines.append(f"| {method} | {whole[method]:.1f} | {whole[f'{method} solver']:.1f} |")
    lines.append(f"| admm / obs | {whole['admm'] / whole['obs']:.2f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the whole-prune benchmark from the command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="l0prune bench bert",
                                     description="A BERT-class encoder pruned with ADMM and OBS.")
    parser.add_argument("--quick", action="store_true", help="2 small blocks, 16 sequences")
    parser.add_argument("--out", type=Path, default=Path("bench-results/bert.md"),
                        help="markdown file")
    args = parser.parse_args(argv)
    records, whole = run(args.quick)
    command = shlex.join(["l0prune", "bench", "bert", *argv])
    report = "\n".join(["# Whole-prune benchmark", "", f"{len(records)} layer problems.", "",
                        table(records, whole), "", f"- one thread; command: `{command}`", ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
