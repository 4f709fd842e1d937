"""The statistics benchmark: each layer's statistics against the matrix-product floor.

``l0prune bench statistics [--quick] [--frames N] [--batch B] [--repeat R] [--h-block N]
[--threads N] [--out FILE]``

For every target of two models, the time to build its statistics with
:func:`l0prune.model.statistics.collect` (the hooks' work and the layer's own forward on its
inputs, captured once from the model) against the floor: one float32 product ``X^T X`` over the
same rows ``X`` (patches for a convolution), materialised beforehand. Two kinds of statistics:
``H`` alone (``sequential=False``) and the paired statistics of ``sequential=True`` (``H`` and
the dense side ``G = Y_0^T X`` or ``C = X^T X_0``; here the layer's input is both ``X`` and
``X_0``, which costs the same). The models:

- a random-init pitch estimator of CREPE's tiny layout (:mod:`l0prune.bench.pitch`: six
  convolutions with 512- and 64-tap kernels, unfolded inputs up to 8,192 wide) on ``--frames``
  frames of 1024 samples, in batches of ``--batch``;
- a random-init BERT-class encoder block (hidden 384, intermediate 1536, MiniLM's widths) on
  token batches of 128 with a quarter of them padding (statistics take the real tokens only).

With ``--h-block N`` every layer wider than ``N`` columns takes block-diagonal statistics
(blocks of at most ``N`` columns, whole channels: :func:`l0prune.model.statistics.column_blocks`)
and its floor is one float32 product ``X_b^T X_b`` per block, each block's rows materialised
beforehand.

Each time is the fastest of ``--repeat`` runs; the table gives both and their ratio, and is
printed and written as markdown (default ``bench-results/statistics.md``).
"""

from __future__ import annotations

import argparse
import shlex
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from l0prune.model.statistics import collect, column_blocks, discover, input_groups
from l0prune.model.targets import Target

from . import add_threads_option, use_threads
from .pitch import frames, pitch_net

__all__ = ["Row", "layer_inputs", "main", "measure"]


class Row:
    """One layer's figures (seconds are the fastest of the repeats)."""

    def __init__(self, model: str, name: str, width: int, rows: int, floor: float,
                 parallel: float, paired: float, blocks: int = 1):
        self.model, self.name, self.width, self.rows = model, name, width, rows
        self.floor, self.parallel, self.paired, self.blocks = floor, parallel, paired, blocks


def layer_inputs(model: nn.Module, batches: list, names: list[str]) -> dict[str, list]:
    """Each named layer's inputs, one per batch, captured in one pass (for the layer alone to
    be run on them again)."""
    modules = dict(model.named_modules())
    found: dict[str, list] = {name: [] for name in names}
    handles = [modules[name].register_forward_pre_hook(
        lambda m, args, name=name: found[name].append(args[0].detach())) for name in names]
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch) if isinstance(batch, dict) else model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return found


class _Alone(nn.Module):
    """One layer as a model: the statistics of its inputs, nothing before it."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, attention_mask=None):
        return self.layer(x)


def _fastest(work, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def measure(model_name: str, target: Target, inputs: list, masks: list | None,
            repeat: int, h_block: int | None = None) -> Row:
    """The floor and the two statistics times of one layer (see the module docstring)."""
    cpu = torch.device("cpu")
    alone = _Alone(target.module)
    data = [x if masks is None else {"x": x, "attention_mask": m}
            for x, m in zip(inputs, masks or [None] * len(inputs), strict=True)]
    discovery = discover(alone, data[0], cpu)
    solo = Target("layer", target.module)
    groups = input_groups([solo], discovery)
    X = torch.cat([solo.rows(x, None if masks is None else m)
                   for x, m in zip(inputs, masks or [None] * len(inputs), strict=True)])
    X = X.float().contiguous()
    width = X.shape[1]
    bounds = (0, width) if h_block is None else column_blocks(width, h_block, solo.kernel)
    parts = [X[:, a:b].contiguous() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    del X
    floor = _fastest(lambda: [part.T @ part for part in parts], repeat)
    blocks = {"layer": bounds} if len(bounds) > 2 else None
    parallel = _fastest(lambda: collect(alone, data, groups, cpu, discovery, blocks=blocks),
                        repeat)
    paired = _fastest(lambda: collect(alone, data, groups, cpu, discovery,
                                      reference=nullcontext, blocks=blocks), repeat)
    return Row(model_name, target.name, width, parts[0].shape[0], floor, parallel, paired,
               len(bounds) - 1)


def _pitch_rows(count: int, batch: int, repeat: int, h_block: int | None) -> list[Row]:
    model = pitch_net("tiny")
    batches = list(frames(count).split(batch))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    inputs = layer_inputs(model, batches, names)
    return [measure("pitch (tiny)", Target(n, dict(model.named_modules())[n]), inputs[n], None,
                    repeat, h_block) for n in names]


def _bert_rows(batches: int, repeat: int, h_block: int | None) -> list[Row]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=384, num_hidden_layers=1,
                        num_attention_heads=12, intermediate_size=1536)
    model = BertModel(config).eval()
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(batches):
        ids = torch.randint(1, 1000, (16, 128), generator=g)
        mask = (torch.arange(128) < torch.randint(64, 129, (16, 1), generator=g)).long()
        data.append({"input_ids": ids, "attention_mask": mask})
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and n.startswith("encoder.")]
    inputs = layer_inputs(model, data, names)
    masks = [batch["attention_mask"] for batch in data]
    return [measure("BERT block", Target(n, dict(model.named_modules())[n]), inputs[n], masks,
                    repeat, h_block) for n in names]


def table(rows: list[Row], command: str, threads: int) -> str:
    lines = [
        "# Statistics against the matrix-product floor", "",
        f"Command: `{command}`; torch threads: {threads}; seconds: the fastest of the repeats.",
        "",
        "| model | layer | width | rows | floor X^T X s | H s | H / floor | paired s | "
        "paired / floor | H blocks |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.name} | {r.width:,} | {r.rows:,} | {r.floor:.3f} | "
            f"{r.parallel:.3f} | {r.parallel / r.floor:.2f} | {r.paired:.3f} | "
            f"{r.paired / r.floor:.2f} | {r.blocks} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="l0prune bench statistics")
    parser.add_argument("--quick", action="store_true", help="16 frames, one BERT batch")
    parser.add_argument("--frames", type=int, default=128, help="pitch frames (default: 128)")
    parser.add_argument("--batch", type=int, default=32, help="frames per batch (default: 32)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per time (default: 3)")
    parser.add_argument("--h-block", type=int, help="block-diagonal statistics of layers "
                        "wider than N columns, in blocks of at most N")
    parser.add_argument("--out", default="bench-results/statistics.md")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads if args.threads is not None else 1)
    count, batches = (16, 1) if args.quick else (args.frames, 8)
    rows = (_pitch_rows(count, args.batch, args.repeat, args.h_block)
            + _bert_rows(batches, args.repeat, args.h_block))
    command = shlex.join(["l0prune", "bench", "statistics", *(argv or [])])
    text = table(rows, command, torch.get_num_threads())
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
