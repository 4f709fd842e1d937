"""Benchmarks: ``python -m l0prune.bench solvers`` (layer solvers) and ``... models`` (models)."""
