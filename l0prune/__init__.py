"""l0prune: optimization-based pruning of torch models, built on the ``solvers`` engine.

- :func:`prune` prunes a trained model in place, to a sparsity or within a loss tolerance
  ``L(W') <= alpha * L(W)``, and returns a :class:`PruneReport`;
- :class:`Finetune` configures the masked finetuning it can run;
- :func:`export` writes the result with pruning made permanent (a dense state dict and a compact
  sparse file, read back by :func:`load_sparse`);
- :func:`second_moments` gives the layer statistics ``H`` the solvers work on.
"""

import os

# OpenMP threads that sleep rather than spin while they wait: read when torch loads its OpenMP
# runtime, so only if torch is not loaded yet (see l0prune.threads for the figures).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from solvers import NM, PerRow, Structured, Unstructured  # noqa: E402

from .exporting import ExportReport, export, load_sparse
from .finetune import Finetune, masked_finetune
from .pruning import prune
from .report import LayerReport, PruneReport, Trial
from .statistics import second_moments

__all__ = [
    "NM",
    "ExportReport",
    "Finetune",
    "LayerReport",
    "PerRow",
    "PruneReport",
    "Structured",
    "Trial",
    "Unstructured",
    "export",
    "load_sparse",
    "masked_finetune",
    "prune",
    "second_moments",
]
