"""l0prune: optimization-based pruning of torch models, built on the ``solvers`` engine."""
