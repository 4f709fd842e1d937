"""``l0prune prune --gradual STEPS``, and the built-in models' training on one thread."""

import json

import torch

from l0prune.demo.digits import digits_mlp, load_digits_data, train, trained_model
from tests.l0prune.cli.conftest import run_main


def test_gradual_runs_both_methods_in_steps_on_the_same_trained_model(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("L0PRUNE_CACHE", str(tmp_path / "cache"))
    done = run_main("prune", "--quick", "--gradual", 2, "--sparsity", 0.8, "--targets", "2", "6",
                    "--out", "run", "--json", "--quiet", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["recipe"]["gradual"] == 2
    runs = {run["method"]: run["report"] for run in data["runs"]}
    assert sorted(runs) == ["admm", "magnitude"]
    for report in runs.values():
        assert [t["stage"] for t in report["trials"]] == ["gradual", "gradual"]
        assert [round(t["target"], 4) for t in report["trials"]] == [0.7, 0.8]
        assert abs(report["trials"][-1]["sparsity"] - 0.8) < 1e-3
        assert report["dense_loss"] == data["dense"]["loss"]  # one trained model for both
    text = (tmp_path / "run" / "report.md").read_text()
    assert "### Gradual steps: admm" in text and "gradual in 2 steps" in text


def test_gradual_with_an_n_m_budget_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    done = run_main("prune", "--gradual", 3, "--budget", "2:4", "--out", "run", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "l0prune: error: --gradual needs a budget the schedule can size (unstructured, per-row "
        "or structured), got --budget 2:4"
    ]
    assert not (tmp_path / "run").exists()


def test_gradual_with_a_cluster_or_resume_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    done = run_main("prune", "--gradual", 3, "--sparsity", 0.5, "--workers", 2, "--resume",
                    "--out", "run", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "l0prune: error: --gradual 3 prunes the whole model in this process at every step; it "
        "does not take --workers, --resume"
    ]
    assert not (tmp_path / "run").exists()


def test_training_runs_on_one_thread_whatever_the_callers_setting():
    seen = []
    model = digits_mlp()
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(model, load_digits_data(), epochs=1)
        assert torch.get_num_threads() == 2  # the caller's setting is put back
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {1}


def test_trained_weights_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    states = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            model, _ = trained_model("mlp", epochs=1, regularized=True)
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
