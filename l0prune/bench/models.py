"""The model benchmark: the sparsest digits models within a loss tolerance, against magnitude.

``l0prune bench models [--quick] [--out FILE] [--alpha A] [--threads N]``
``l0prune bench models --workflows [--quick] [--out FILE] [--threads N]``: the
prune-retrain workflows instead (:mod:`l0prune.bench.workflows`).

For the digits MLP and CNN (:mod:`l0prune.demo.digits`, trained 30 epochs with the regularized
recipe of the command line's built-in model), each method finds the
highest sparsity whose validation loss is at most ``alpha`` times the dense one (default
``alpha = 1.05``), once without finetuning and once with masked finetuning at every trial
(10 epochs of Adam, lr 1e-3, on the training split, keeping the epoch with the best validation
loss, :class:`~l0prune.pipeline.finetune.Finetune`'s default). Sparsity counts the weights of every
layer but the classifier, which stays dense. Methods:

- ``magnitude``: ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` over the
  same layers, its amount found by the same bisection and upward scan as l0prune's uniform
  stage (:func:`l0prune.pipeline.search.bisect_and_scan`);
- ``obs`` and ``admm``: :func:`l0prune.prune` with that solver (sequential statistics on the
  training split, the two-stage search of :mod:`l0prune.pipeline.search`).

A row gives the sparsity reached, the weights kept relative to magnitude's (the target: at most
2/3), the validation loss ratio and the test accuracy. The table is printed and written as
markdown (default ``bench-results/models.md``). ``--quick`` trains 10 epochs and finetunes 2.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from l0prune import Finetune, prune
from l0prune.data.batches import cross_entropy, mean_loss
from l0prune.demo.digits import DigitsData, accuracy, trained_model
from l0prune.model.masks import masked_weight
from l0prune.pipeline.finetune import masked_finetune
from l0prune.pipeline.search import MAX_SPARSITY, RESOLUTION, bisect_and_scan

from . import add_threads_option, use_threads, workflows

__all__ = ["Row", "main", "magnitude_search", "run", "table"]

METHODS = ("magnitude", "obs", "admm")
_CPU = torch.device("cpu")


@dataclass
class Row:
    """One model, method and finetuning setting."""

    model: str
    method: str
    finetune_epochs: int
    sparsity: float
    ratio: float
    accuracy: float
    seconds: float


def _targets(model: nn.Module) -> list[tuple[nn.Module, str]]:
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return [(m, "weight") for m in layers[:-1]]


def magnitude_search(
    model: nn.Module, data: DigitsData, alpha: float, finetune: Finetune | None, seed: int = 0
) -> tuple[nn.Module, float]:
    """The ``global_unstructured`` magnitude baseline at the highest passing amount.

    Args:
        model: the dense trained model (not changed).
        data: its data (validation split for the loss).
        alpha: the loss tolerance.
        finetune: masked finetuning at every trial, or ``None``.
        seed: finetuning seed.

    Returns:
        The pruned copy at the best amount, and its validation loss.

    Example:
        >>> model, data = trained_model("mlp")  # doctest: +SKIP
        >>> pruned, loss = magnitude_search(model, data, 1.05, None)  # doctest: +SKIP
    """
    validation = data.loader("val")
    limit = alpha * mean_loss(model, validation, cross_entropy, _CPU)
    best: dict[str, object] = {"amount": 0.0, "model": copy.deepcopy(model)}
    best["loss"] = mean_loss(best["model"], validation, cross_entropy, _CPU)

    def passes(amount: float) -> bool:
        trial = copy.deepcopy(model)
        torch_prune.global_unstructured(
            _targets(trial), pruning_method=torch_prune.L1Unstructured, amount=amount
        )

        def validate() -> float:
            return mean_loss(trial, validation, cross_entropy, _CPU)

        if finetune is not None:
            loss = masked_finetune(
                trial, finetune, cross_entropy, _CPU, validate=validate, seed=seed
            ).loss
        else:
            loss = validate()
        if loss <= limit and amount > best["amount"]:
            best.update(amount=amount, model=trial, loss=loss)
        return loss <= limit

    bisect_and_scan(lambda amount, _: passes(amount), 0.0, MAX_SPARSITY, RESOLUTION)
    return best["model"], best["loss"]


def _sparsity(model: nn.Module) -> float:
    weights = [masked_weight(m) for m, _ in _targets(model)]
    kept = sum(int((w != 0).sum()) for w in weights)
    return 1.0 - kept / sum(w.numel() for w in weights)


def run(kind: str, *, epochs: int, finetune_epochs: int, alpha: float, seed: int = 0,
        methods=METHODS) -> tuple[list[Row], float]:
    """Every method on one digits model, without and with finetuning.

    Args:
        kind: ``"mlp"`` or ``"cnn"``.
        epochs: training epochs of the dense model.
        finetune_epochs: finetuning epochs per trial.
        alpha: the loss tolerance.
        seed: seed of the data split, training and finetuning.
        methods: the methods to run (``"magnitude"`` is the torch baseline).

    Returns:
        The rows and the dense model's test accuracy.

    Example:
        >>> rows, dense_accuracy = run("mlp", epochs=10, finetune_epochs=2,
        ...                            alpha=1.05)  # doctest: +SKIP
    """
    dense, data = trained_model(kind, seed=seed, epochs=epochs, regularized=True)
    test = data.loader("test")
    config = Finetune(
        data=data.loader("train", batch_size=64, shuffle=True, seed=seed),
        epochs=finetune_epochs, lr=1e-3,
    )
    dense_loss = mean_loss(dense, data.loader("val"), cross_entropy, _CPU)
    rows = []
    for method in methods:
        for finetune in (None, config):
            start = time.perf_counter()
            if method == "magnitude":
                model, loss = magnitude_search(dense, data, alpha, finetune, seed)
            else:
                model = copy.deepcopy(dense)
                report = prune(
                    model, data.loader("train"), alpha=alpha, validation=data.loader("val"),
                    method=method, finetune=finetune, seed=seed, progress=False,
                )
                loss = report.pruned_loss
            rows.append(Row(
                kind, method, finetune_epochs if finetune else 0, _sparsity(model),
                loss / dense_loss,
                accuracy(model.eval(), test), time.perf_counter() - start,
            ))
            print(_line(rows[-1], rows), file=sys.stderr, flush=True)
    return rows, accuracy(dense, test)


def _kept_vs_magnitude(row: Row, rows: list[Row]) -> str:
    base = next(
        (r for r in rows if r.model == row.model and r.method == "magnitude"
         and r.finetune_epochs == row.finetune_epochs),
        None,
    )
    if base is None or base.sparsity >= 1:
        return "-"
    return f"{(1 - row.sparsity) / (1 - base.sparsity):.2f}"


def _line(row: Row, rows: list[Row]) -> str:
    return (
        f"| {row.model} | {row.method} | {row.finetune_epochs} | "
        f"{100 * row.sparsity:.1f} % | {_kept_vs_magnitude(row, rows)} | {row.ratio:.4f} | "
        f"{100 * row.accuracy:.1f} % | {row.seconds:.1f} |"
    )


def table(rows: list[Row], dense_accuracy: dict[str, float], alpha: float) -> str:
    """The markdown table of ``rows``.

    Args:
        rows: the results.
        dense_accuracy: test accuracy of each dense model.
        alpha: the tolerance used.

    Returns:
        The table and a line of context.

    Example:
        >>> print(table([Row("mlp", "admm", 0, 0.9, 1.04, 0.95, 3.0)], {"mlp": 0.95}, 1.05))
        ... # doctest: +ELLIPSIS
        Highest sparsity ...
        | mlp | admm | 0 | 90.0 % | - | 1.0400 | 95.0 % | 3.0 |
        ...
    """
    header = [
        f"Highest sparsity with validation loss <= {alpha} x dense (classifier kept dense); "
        "finetuning: epochs of masked Adam at every trial of the search.",
        "",
        "| model | method | finetuning epochs | sparsity | kept / magnitude's | loss ratio | "
        "test accuracy | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    lines = [_line(row, rows) for row in rows]
    footer = ["", "Dense test accuracy: " + ", ".join(
        f"{kind} {100 * acc:.1f} %" for kind, acc in dense_accuracy.items()
    )]
    return "\n".join(header + lines + footer)


def main(argv: list[str] | None = None) -> None:
    """Run the model benchmark, print the table and write it to ``--out``.

    Args:
        argv: command-line options (those after ``l0prune bench NAME``).

    Returns:
        None.

    Example:
        >>> main(["--quick", "--out", "/tmp/models.md"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(prog="l0prune bench models")
    parser.add_argument("--quick", action="store_true", help="10 training epochs, 2 finetuning")
    parser.add_argument("--out", help="markdown output file (default: bench-results/models.md, "
                                      "with --workflows bench-results/workflows.md)")
    parser.add_argument("--alpha", type=float, default=1.05, help="loss tolerance")
    parser.add_argument("--workflows", action="store_true",
                        help="compare one-shot + finetuning, gradual and whole-model L0 at "
                             "90/95/98 %% and alpha 1.02 / 1.05 instead (also writes a plot)")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    use_threads(args.threads)
    if args.workflows:
        workflows.main(quick=args.quick, out=args.out or "bench-results/workflows.md")
        return
    epochs, finetune_epochs = (10, 2) if args.quick else (30, 10)
    rows, dense_accuracy = [], {}
    for kind in ("mlp", "cnn"):
        kind_rows, dense_accuracy[kind] = run(
            kind, epochs=epochs, finetune_epochs=finetune_epochs, alpha=args.alpha
        )
        rows += kind_rows
    text = table(rows, dense_accuracy, args.alpha)
    print(text)
    out = Path(args.out or "bench-results/models.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
