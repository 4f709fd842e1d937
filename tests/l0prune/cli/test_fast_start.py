"""The command line answers at once: its help and its argument errors load no torch, and
``import l0prune`` loads none of the heavy optional libraries nor changes the environment."""

import os
import subprocess
import sys

HEAVY = ("torch", "numpy", "cvxpy", "matplotlib", "transformers", "dask", "scipy")


def _loaded(code: str) -> list[str]:
    """The heavy modules in ``sys.modules`` after ``code`` runs in a fresh interpreter."""
    probe = (f"{code}\nimport sys\n"
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, check=True)
    return eval(done.stdout.strip().splitlines()[-1])


def test_help_and_bad_flags_import_no_torch():
    code = ("from l0prune.cli import main\n"
            "for argv in (['--help'], ['prune', '--help'], ['solve', '--help'], ['bench', "
            "'--help'], ['convert', '--help'], ['prune', '--spasity', '0.5'], ['convert', 'a', "
            "'b']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass")
    assert _loaded(code) == []


def test_import_l0prune_loads_nothing_heavy_and_sets_no_variable():
    code = "import os\nimport l0prune, solvers\nassert 'OMP_WAIT_POLICY' not in os.environ"
    assert _loaded(code) == []
    assert _loaded("from l0prune import prune") == ["numpy", "torch"]
