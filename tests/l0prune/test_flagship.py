"""The default run, ``l0prune prune``: ADMM keeps no more weights than magnitude pruning within
the same tolerance (alpha 1.02), on one and two threads and for three training seeds.

Slow (each run trains the built-in CNN and runs two searches with finetuning: minutes on two
cores); run with ``python -m pytest -m slow tests/l0prune/test_flagship.py``.
"""

import json

import pytest

from tests.l0prune.cli.conftest import run_cli


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache: each seed's model trains once for both thread counts."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threads", [1, 2])
def test_admm_keeps_at_most_magnitudes_weights_at_the_default_tolerance(tmp_path, cache, seed,
                                                                       threads):
    done = run_cli("prune", "--threads", threads, "--seed", seed, "--out", "run", "--json",
                   "--quiet", cwd=tmp_path, cache=cache, timeout=3600)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["recipe"]["alpha"] == 1.02
    kept = {run["method"]: run["report"]["kept"] for run in data["runs"]}
    assert kept["admm"] <= kept["magnitude"], kept
    for run in data["runs"]:
        report = run["report"]
        assert report["pruned_loss"] <= 1.02 * report["dense_loss"]
