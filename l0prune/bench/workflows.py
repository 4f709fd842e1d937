"""The prune-retrain workflows side by side: one-shot + finetuning, gradual, whole-model L0.

``l0prune bench models --workflows [--quick] [--out FILE] [--threads N]``

On the digits MLP and CNN (:mod:`l0prune.demo.digits`, the regularized recipe, 30 epochs), each
workflow gets the same number of passes over the training split, ``E = 10``:

- *one-shot*: :func:`l0prune.prune` with ADMM, then ``E`` epochs of masked finetuning;
- *gradual*: :func:`l0prune.gradual` with ADMM, ``5`` steps of the cubic schedule, ``E / 5``
  epochs of masked finetuning after each;
- *L0*: :func:`l0prune.train_l0`, ``E / 2`` epochs of gated training (the weights at the
  models' training learning rate, 3e-3, the gates at 0.2: with the library's defaults, 1e-3
  and 0.1, the gated network fell further behind in so few steps), then ``E / 2`` of masked
  finetuning.

Finetuning is :class:`~l0prune.pipeline.finetune.Finetune`'s default (Adam, lr 1e-3, the epoch with
the best validation loss kept). At sparsities 90 %, 95 % and 98 % a row gives the test accuracy and
the validation loss ratio; at ``alpha = 1.02`` and ``1.05`` it gives the sparsity each workflow
reaches (one-shot: the search of :mod:`l0prune.pipeline.search`, every trial finetuned ``E``
epochs). The table is printed and written as markdown (default ``bench-results/workflows.md``), the
plot of test accuracy against sparsity next to it (``workflows.png``). ``--quick`` trains 10 epochs,
``E = 4``, at 90 % and ``alpha = 1.05`` only.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import l0prune
from l0prune import Finetune
from l0prune.data.batches import cross_entropy, mean_loss
from l0prune.demo.digits import DigitsData, accuracy, trained_model

__all__ = ["WORKFLOWS", "WorkflowRow", "plot", "run", "table"]

WORKFLOWS = ("one-shot", "gradual", "L0")
SPARSITIES, ALPHAS = (0.9, 0.95, 0.98), (1.02, 1.05)
GRADUAL_STEPS = 5
#: Learning rates of the L0 workflow's gated training: weights, gates.
L0_LR, L0_GATE_LR = 3e-3, 0.2
_CPU = torch.device("cpu")


@dataclass
class WorkflowRow:
    """One model, workflow and goal (a sparsity or a tolerance)."""

    model: str
    workflow: str
    goal: str
    sparsity: float
    ratio: float
    accuracy: float
    seconds: float


def _run_one(workflow: str, dense: nn.Module, data: DigitsData, epochs: int, *,
             sparsity: float | None, alpha: float | None, seed: int, steps: int,
             options: dict | None) -> nn.Module:
    """``workflow`` on a copy of ``dense``; returns the pruned copy."""
    model = copy.deepcopy(dense)
    train = data.loader("train", batch_size=64, shuffle=True, seed=seed)
    common = dict(sparsity=sparsity, alpha=alpha, validation=data.loader("val"), seed=seed,
                  progress=False)
    if workflow == "one-shot":
        l0prune.prune(model, data.loader("train"), method="admm", options=options,
                      finetune=Finetune(data=train, epochs=epochs), **common)
    elif workflow == "gradual":
        l0prune.gradual(model, data.loader("train"), steps=steps, method="admm", options=options,
                        finetune=Finetune(data=train, epochs=max(1, epochs // steps)), **common)
    else:
        l0prune.train_l0(model, train, epochs=max(1, epochs // 2), lr=L0_LR, gate_lr=L0_GATE_LR,
                         finetune=Finetune(data=train, epochs=max(1, epochs - epochs // 2)),
                         **common)
    return model


def _sparsity(model: nn.Module) -> float:
    masks = list(l0prune.masks_of(model).values())
    return 1.0 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def run(kind: str, *, epochs: int, finetune_epochs: int, sparsities=SPARSITIES, alphas=ALPHAS,
        seed: int = 0, steps: int = GRADUAL_STEPS,
        options: dict | None = None) -> tuple[list[WorkflowRow], float]:
    """Every workflow on one digits model, at each sparsity and each tolerance.

    Args:
        kind: ``"mlp"`` or ``"cnn"``.
        epochs: training epochs of the dense model.
        finetune_epochs: ``E``, the passes over the training split each workflow gets.
        sparsities: the fixed sparsities.
        alphas: the tolerances.
        seed: seed of the split, training, finetuning and gates.
        steps: the gradual workflow's steps (each finetuned ``finetune_epochs // steps``).
        options: ADMM's options (default: its defaults).

    Returns:
        The rows and the dense model's test accuracy.

    Example:
        >>> rows, dense = run("mlp", epochs=10, finetune_epochs=4, sparsities=(0.9,),
        ...                   alphas=())  # doctest: +SKIP
    """
    dense, data = trained_model(kind, seed=seed, epochs=epochs, regularized=True)
    dense_loss = mean_loss(dense, data.loader("val"), cross_entropy, _CPU)
    test = data.loader("test")
    rows = []
    goals = [(f"{100 * s:g} %", s, None) for s in sparsities]
    goals += [(f"alpha {a:g}", None, a) for a in alphas]
    for label, sparsity, alpha in goals:
        for workflow in WORKFLOWS:
            start = time.perf_counter()
            model = _run_one(workflow, dense, data, finetune_epochs, sparsity=sparsity,
                             alpha=alpha, seed=seed, steps=steps, options=options)
            loss = mean_loss(model, data.loader("val"), cross_entropy, _CPU)
            rows.append(WorkflowRow(kind, workflow, label, _sparsity(model), loss / dense_loss,
                                    accuracy(model.eval(), test), time.perf_counter() - start))
            print(_line(rows[-1]), file=sys.stderr, flush=True)
    return rows, accuracy(dense, test)


def _line(row: WorkflowRow) -> str:
    return (f"| {row.model} | {row.goal} | {row.workflow} | {100 * row.sparsity:.1f} % | "
            f"{row.ratio:.4f} | {100 * row.accuracy:.1f} % | {row.seconds:.1f} |")


def table(rows: list[WorkflowRow], dense_accuracy: dict[str, float], finetune_epochs: int) -> str:
    """The markdown table of ``rows``.

    Example:
        >>> print(table([WorkflowRow("mlp", "L0", "90 %", 0.9, 1.01, 0.95, 2.0)], {"mlp": 0.96},
        ...             10).splitlines()[4])
        | mlp | 90 % | L0 | 90.0 % | 1.0100 | 95.0 % | 2.0 |
    """
    header = [
        f"Prune-retrain workflows, {finetune_epochs} passes over the training split each "
        f"(one-shot: then {finetune_epochs} finetuning epochs; gradual: {GRADUAL_STEPS} steps; "
        "L0: half gated training, half finetuning); goal: a sparsity, or the sparsest model "
        "with validation loss <= alpha x dense.",
        "",
        "| model | goal | workflow | sparsity | loss ratio | test accuracy | seconds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    footer = ["", "Dense test accuracy: " + ", ".join(
        f"{kind} {100 * acc:.1f} %" for kind, acc in dense_accuracy.items())]
    return "\n".join(header + [_line(row) for row in rows] + footer)


def plot(rows: list[WorkflowRow], dense_accuracy: dict[str, float], path: Path | None = None):
    """Test accuracy against sparsity, one panel per model: the fixed sparsities joined by a
    line per workflow, the tolerance runs that pruned anything as open markers, the dense
    accuracy dashed.

    Returns:
        The matplotlib ``Figure``, also written to ``path`` if given.
    """
    from matplotlib.figure import Figure

    kinds = list(dense_accuracy)
    figure = Figure(figsize=(5.5 * len(kinds), 4.2), layout="constrained")
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    colors = dict(zip(WORKFLOWS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for ax, kind in zip(axes, kinds, strict=True):
        for workflow in WORKFLOWS:
            mine = [r for r in rows if r.model == kind and r.workflow == workflow]
            fixed = [r for r in mine if not r.goal.startswith("alpha")]
            tolerant = [r for r in mine if r.goal.startswith("alpha") and r.sparsity > 0]
            ax.plot([100 * r.sparsity for r in fixed], [100 * r.accuracy for r in fixed],
                    marker="o", color=colors[workflow], label=workflow)
            ax.scatter([100 * r.sparsity for r in tolerant], [100 * r.accuracy for r in tolerant],
                       marker="D", facecolors="none", edgecolors=colors[workflow], s=50,
                       label=f"{workflow}, within alpha" if tolerant else None)
        ax.axhline(100 * dense_accuracy[kind], color="gray", linestyle="--", linewidth=1,
                   label="dense")
        ax.set(title=f"digits {kind.upper()}", xlabel="sparsity of the pruned layers (%)",
               ylabel="test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def main(*, quick: bool, out: str) -> None:
    """Run the comparison on both models, print the table, write it and the plot (the options
    are parsed by :func:`l0prune.bench.models.main`).

    Args:
        quick: the reduced run.
        out: the markdown file; the plot goes next to it as ``workflows.png``.

    Example:
        >>> main(quick=True, out="/tmp/workflows.md")  # doctest: +SKIP
    """
    epochs, finetune_epochs = (10, 4) if quick else (30, 10)
    sparsities, alphas = ((0.9,), (1.05,)) if quick else (SPARSITIES, ALPHAS)
    rows, dense_accuracy = [], {}
    for kind in ("mlp", "cnn"):
        kind_rows, dense_accuracy[kind] = run(kind, epochs=epochs, finetune_epochs=finetune_epochs,
                                              sparsities=sparsities, alphas=alphas)
        rows += kind_rows
    text = table(rows, dense_accuracy, finetune_epochs)
    print(text)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    plot(rows, dense_accuracy, path.with_name("workflows.png"))
