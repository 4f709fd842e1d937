"""The default run, ``l0prune prune``: ADMM keeps no more weights than magnitude pruning within
the same tolerance (alpha 1.02), for three training seeds, and one and two threads give the
same model.

Slow (each run trains the built-in CNN and runs two searches with finetuning: minutes on two
cores); run with ``python -m pytest -m slow tests/l0prune/test_flagship.py``.
"""

import json

import pytest
import torch

from tests.l0prune.cli.conftest import run_cli


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache: each seed's model trains once for both thread counts."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_admm_keeps_at_most_magnitudes_weights_and_the_thread_count_changes_nothing(
        tmp_path, cache, seed):
    """Both thread counts give the same search path, the same masks and the same weights up to
    float32 rounding (the finetuning's sums run on the threads)."""
    models, kept = [], []
    for threads in (1, 2):
        done = run_cli("prune", "--threads", threads, "--seed", seed, "--out", f"run{threads}",
                       "--json", "--quiet", cwd=tmp_path, cache=cache, timeout=3600)
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["recipe"]["alpha"] == 1.02
        runs = {run["method"]: run["report"] for run in data["runs"]}
        assert runs["admm"]["kept"] <= runs["magnitude"]["kept"], runs
        for report in runs.values():
            assert report["pruned_loss"] <= 1.02 * report["dense_loss"]
        kept.append({m: (r["kept"], [t["met"] for t in r["trials"]]) for m, r in runs.items()})
        models.append(torch.load(tmp_path / f"run{threads}" / "model.pt", weights_only=True))
    assert kept[0] == kept[1]
    for name, weight in models[0].items():
        assert torch.equal(weight != 0, models[1][name] != 0), name
        assert torch.allclose(weight, models[1][name], rtol=0, atol=1e-6), name
