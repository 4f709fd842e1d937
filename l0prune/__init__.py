"""l0prune: optimization-based pruning of torch models, built on the ``solvers`` engine.

- :func:`prune` prunes a trained model in place, to a sparsity or within a loss tolerance
  ``L(W') <= alpha * L(W)``, and returns a :class:`PruneReport`; its settings are a
  :class:`PruneConfig` (also the command line's flags and recipe files);
- :func:`gradual` prunes it in steps of a sparsity schedule with finetuning between (Zhu &
  Gupta); :func:`train_l0` trains it with hard-concrete gates to a sparsity (Louizos et al.,
  with the Lagrangian controller of Wang et al.) and prunes it to the exact budget;
- :class:`Finetune` configures the masked finetuning it can run;
- :func:`export` writes the result with pruning made permanent (a dense state dict and a compact
  sparse file, read back by :func:`load_sparse`; the suffix picks safetensors or torch);
- a pruned model holds its pruned weights in place, so its state dict saves like the dense
  one's; :func:`mask_of` / :func:`masks_of` give the masks kept beside them, :func:`torch_prune`
  puts them into ``torch.nn.utils.prune``'s form for training, and :func:`finalize` makes the
  pruning permanent in the model itself; :func:`save_pretrained` and :func:`load_pretrained`
  write and read Hugging Face folders, dense, compressed, or in
  compressed-tensors' sparse formats;
- :func:`text_batches` cuts tokenised text into calibration / validation windows, and
  :func:`next_token_nll` is the causal-LM loss whose ``exp`` the report gives as perplexity;
- :func:`second_moments` gives the layer statistics ``H`` the solvers work on.

The names load on first use: ``import l0prune`` imports no solver, and the command line's help
imports no torch. The rest of the package is grouped by job: ``model`` (targets, masks,
snapshots, statistics), ``pipeline`` (how a run goes), ``data``, ``io`` (files), ``cli``,
``demo`` (the built-in models) and ``bench`` (the benchmarks, which the library never imports).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: Each public name and the module that defines it.
_WHERE = {
    "NM": "solvers", "PerRow": "solvers", "Structured": "solvers", "Unstructured": "solvers",
    "PruneConfig": "l0prune.config",
    "load_pretrained": "l0prune.io.checkpoints", "save_pretrained": "l0prune.io.checkpoints",
    "ExportReport": "l0prune.io.exporting", "export": "l0prune.io.exporting",
    "load_sparse": "l0prune.io.exporting",
    "finalize": "l0prune.model.finalize",
    "mask_of": "l0prune.model.masks", "masks_of": "l0prune.model.masks",
    "torch_prune": "l0prune.model.masks",
    "Finetune": "l0prune.pipeline.finetune", "masked_finetune": "l0prune.pipeline.finetune",
    "gradual": "l0prune.pipeline.gradual",
    "L0Report": "l0prune.pipeline.l0_training", "train_l0": "l0prune.pipeline.l0_training",
    "next_token_nll": "l0prune.data.perplexity",
    "IncompatibleBudget": "l0prune.pipeline.allocation",
    "prune": "l0prune.pruning",
    "LayerReport": "l0prune.report", "PruneReport": "l0prune.report", "Trial": "l0prune.report",
    "second_moments": "l0prune.model.statistics",
    "text_batches": "l0prune.data.text",
}

__all__ = [
    "NM",
    "ExportReport",
    "Finetune",
    "IncompatibleBudget",
    "L0Report",
    "LayerReport",
    "PerRow",
    "PruneConfig",
    "PruneReport",
    "Structured",
    "Trial",
    "Unstructured",
    "export",
    "finalize",
    "gradual",
    "load_pretrained",
    "load_sparse",
    "mask_of",
    "masked_finetune",
    "masks_of",
    "next_token_nll",
    "prune",
    "save_pretrained",
    "second_moments",
    "text_batches",
    "torch_prune",
    "train_l0",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'l0prune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what the names are, for type checkers and documentation tools
    from solvers import NM, PerRow, Structured, Unstructured

    from .config import PruneConfig
    from .data.perplexity import next_token_nll
    from .data.text import text_batches
    from .io.checkpoints import load_pretrained, save_pretrained
    from .io.exporting import ExportReport, export, load_sparse
    from .model.finalize import finalize
    from .model.masks import mask_of, masks_of, torch_prune
    from .model.statistics import second_moments
    from .pipeline.allocation import IncompatibleBudget
    from .pipeline.finetune import Finetune, masked_finetune
    from .pipeline.gradual import gradual
    from .pipeline.l0_training import L0Report, train_l0
    from .pruning import prune
    from .report import LayerReport, PruneReport, Trial
