"""l0prune: optimization-based pruning of torch models, built on the ``solvers`` engine.

- :func:`prune` prunes a trained model in place, to a sparsity or within a loss tolerance
  ``L(W') <= alpha * L(W)``, and returns a :class:`PruneReport`;
- :func:`gradual` prunes it in steps of a sparsity schedule with finetuning between (Zhu &
  Gupta); :func:`train_l0` trains it with hard-concrete gates to a sparsity (Louizos et al.,
  with the Lagrangian controller of Wang et al.) and prunes it to the exact budget;
- :class:`Finetune` configures the masked finetuning it can run;
- :func:`export` writes the result with pruning made permanent (a dense state dict and a compact
  sparse file, read back by :func:`load_sparse`; the suffix picks safetensors or torch);
- :func:`finalize` makes the pruning permanent in the model itself; :func:`save_pretrained` and
  :func:`load_pretrained` write and read Hugging Face folders, dense or compressed;
- :func:`text_batches` cuts tokenised text into calibration / validation windows, and
  :func:`next_token_nll` is the causal-LM loss whose ``exp`` the report gives as perplexity;
- :func:`second_moments` gives the layer statistics ``H`` the solvers work on.
"""

import os

# OpenMP threads that sleep rather than spin while they wait: read when torch loads its OpenMP
# runtime, so only if torch is not loaded yet (see l0prune.pipeline.threads for the figures).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from solvers import NM, PerRow, Structured, Unstructured  # noqa: E402

from .data.perplexity import next_token_nll
from .data.text import text_batches
from .io.checkpoints import load_pretrained, save_pretrained
from .io.exporting import ExportReport, export, load_sparse
from .model.finalize import finalize
from .model.statistics import second_moments
from .pipeline.finetune import Finetune, masked_finetune
from .pipeline.gradual import gradual
from .pipeline.l0_training import L0Report, train_l0
from .pruning import prune
from .report import LayerReport, PruneReport, Trial

__all__ = [
    "NM",
    "ExportReport",
    "Finetune",
    "L0Report",
    "LayerReport",
    "PerRow",
    "PruneReport",
    "Structured",
    "Trial",
    "Unstructured",
    "export",
    "finalize",
    "gradual",
    "load_pretrained",
    "load_sparse",
    "masked_finetune",
    "next_token_nll",
    "prune",
    "save_pretrained",
    "second_moments",
    "text_batches",
    "train_l0",
]
