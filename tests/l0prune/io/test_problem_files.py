"""Layer problems as files: saved, solved on a cluster, applied: the model of a direct run."""

import copy
import json

import pytest
import torch
from torch import nn

import l0prune
from l0prune.cli import main
from l0prune.io.problem_files import apply_solutions, save_problems, solve_folder
from tests.l0prune.cli.conftest import USER_MODEL, assert_one_line_error, run_main


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_state(model, state):
    now = _state(model)
    assert list(now) == list(state)
    for key in state:
        assert torch.equal(now[key], state[key]), key


def _calibration(data):
    return [batch for _, batch in zip(range(2), data.loader("train"), strict=False)]


def test_the_round_trip_through_files_gives_the_direct_run(tmp_path, cnn, dask_client):
    model, data = cnn
    calibration = _calibration(data)
    before = _state(model)
    index = save_problems(model, calibration, tmp_path / "problems", sparsity=0.6,
                          progress=False)
    _assert_state(model, before)  # nothing solved, nothing changed
    assert l0prune.masks_of(model) == {}
    assert [p["name"] for p in index["problems"]] == ["0", "2", "6"]
    assert json.loads((tmp_path / "problems" / "index.json").read_text()) == index
    rows = solve_folder(tmp_path / "problems", "obs", dask_client, show_progress=False)

    direct = copy.deepcopy(model)
    expected = l0prune.prune(direct, calibration, sparsity=0.6, method="obs", sequential=False,
                             progress=False)
    report = apply_solutions(model, calibration, tmp_path / "problems", sparsity=0.6,
                             progress=False)
    _assert_state(model, _state(direct))
    assert report.method == "obs"
    assert [(x.name, x.kept, x.relative_error) for x in report.layers] == [
        (x.name, x.kept, x.relative_error) for x in expected.layers] == [
        (r["name"], r["kept"], r["relative_error"]) for r in rows]


def test_block_mode_problems_round_trip_on_a_bert(tmp_path, bert, tokens):
    before = _state(bert)
    index = save_problems(bert, tokens, tmp_path / "p", budget=l0prune.NM(2, 4), progress=False)
    _assert_state(bert, before)
    assert len(index["problems"]) == 12 and len(list((tmp_path / "p" / "moments").iterdir())) == 8
    solve_folder(tmp_path / "p", "wanda", show_progress=False)
    direct = copy.deepcopy(bert)
    expected = l0prune.prune(direct, tokens, budget=l0prune.NM(2, 4), method="wanda",
                             sequential=False, progress=False)
    report = apply_solutions(bert, tokens, tmp_path / "p", budget=l0prune.NM(2, 4),
                             progress=False)
    assert report.blocks == expected.blocks == "encoder.layer, 2 blocks"
    _assert_state(bert, _state(direct))


def test_problems_of_a_sequential_or_search_run_are_refused(tmp_path, mlp):
    model, data = mlp
    calibration = _calibration(data)
    with pytest.raises(ValueError, match="needs sequential=False"):
        save_problems(model, calibration, tmp_path / "a", sparsity=0.5, sequential=True)
    with pytest.raises(ValueError, match="takes no alpha="):
        save_problems(model, calibration, tmp_path / "b", alpha=1.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        save_problems(model, calibration, tmp_path / "full", sparsity=0.5)


def _net(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, hidden), nn.ReLU(), nn.Linear(hidden, 16), nn.ReLU(),
                         nn.Linear(16, 3))


@pytest.mark.parametrize("other, words", [
    (lambda: _net(24), ["layer '0' has weight 32x12 there, 24x12 here"]),
    (lambda: nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 16)),
                           nn.ReLU(), nn.Linear(16, 3)), ["are for other layers", "'2.0'"]),
    (lambda: _net(32).apply(lambda m: m.reset_parameters() if isinstance(m, nn.Linear)
                            else None), ["dense weight W differs"]),
])
def test_solutions_from_another_model_are_refused_and_the_model_is_unchanged(tmp_path, other,
                                                                             words):
    data = [torch.randn(64, 12, generator=torch.Generator().manual_seed(0))]
    save_problems(_net(32), data, tmp_path / "p", sparsity=0.5, progress=False)
    solve_folder(tmp_path / "p", "obs", show_progress=False)
    model = other()
    before = _state(model)
    with pytest.raises(ValueError) as info:
        apply_solutions(model, data, tmp_path / "p", sparsity=0.5, progress=False)
    assert len(str(info.value).splitlines()) == 1
    for word in words:
        assert word in str(info.value)
    _assert_state(model, before)


# --- the command line ----------------------------------------------------------------------------

# A module name of its own: other tests import a different ``mynet`` in this process.
USER_FLAGS = ["--model", "filesnet:build", "--calibration", "filesnet:calibration",
              "--validation", "filesnet:validation", "--no-sequential", "--sparsity", 0.5,
              "--threads", 1, "--finetune-epochs", 0, "--baseline", "none", "--quiet"]


def test_the_commands_round_trip_on_a_local_cluster(tmp_path, capsys, monkeypatch):
    (tmp_path / "filesnet.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = dict(cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    done = run_main("prune", *USER_FLAGS, "--save-problems", "problems", **args)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "run").exists() and (tmp_path / "problems" / "index.json").exists()
    done = run_main("solve", "problems", "--method", "obs", "--workers", 2, "--json", **args)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["solutions"]
    assert [r["name"] for r in rows] == ["0", "2"]
    assert (tmp_path / "problems" / "solutions" / "table.md").read_text().count("\n") == 4
    done = run_main("prune", *USER_FLAGS, "--apply-solutions", "problems", "--out", "applied",
                    **args)
    assert done.returncode == 0, done.stderr
    done = run_main("prune", *USER_FLAGS, "--method", "obs", "--out", "direct", **args)
    assert done.returncode == 0, done.stderr
    applied = torch.load(tmp_path / "applied" / "model.pt")
    direct = torch.load(tmp_path / "direct" / "model.pt")
    assert list(applied) == list(direct)
    assert all(torch.equal(applied[k], direct[k]) for k in direct)
    report = json.loads((tmp_path / "applied" / "report.json").read_text())
    assert report["runs"][0]["method"] == "obs"
    assert [x["relative_error"] for x in report["runs"][0]["report"]["layers"]] == [
        r["relative_error"] for r in rows]


@pytest.mark.parametrize("args, words", [
    (["--workers", "0"], ["--workers must be an integer >= 1, got 0"]),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], ["give --workers or --scheduler"]),
    (["--scheduler", "tcp://127.0.0.1:9"], ["scheduler tcp://127.0.0.1:9 cannot be reached"]),
    (["--save-problems", "p", "--sequential"], ["--save-problems needs --no-sequential"]),
    (["--apply-solutions", "nowhere"], ["nowhere is not a problem folder: no index.json"]),
    (["--retries", "1"], ["--retries applies to the cluster --workers N starts"]),
])
def test_bad_cluster_and_folder_flags_are_one_line_and_write_nothing(tmp_path, capsys,
                                                                     monkeypatch, args, words):
    monkeypatch.setattr("l0prune.pipeline.executors.CONNECT_TIMEOUT", 1)
    (tmp_path / "filesnet.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    done = run_main("prune", *USER_FLAGS, *args, "--out", "run", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(done, *words)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        "filesnet.py"]


def test_applying_solutions_of_another_model_from_the_shell_changes_nothing(
        tmp_path, capsys, monkeypatch):
    (tmp_path / "filesnet.py").write_text(USER_MODEL)
    (tmp_path / "widenet.py").write_text(USER_MODEL.replace("Linear(12, 32), nn.ReLU(), "
                                                            "nn.Linear(32, 16)",
                                                            "Linear(12, 40), nn.ReLU(), "
                                                            "nn.Linear(40, 16)"))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = dict(cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert run_main("prune", *USER_FLAGS, "--save-problems", "p", **args).returncode == 0
    assert run_main("solve", "p", "--method", "obs", "--quiet", **args).returncode == 0
    flags = [("widenet:build" if f == "filesnet:build" else f) for f in USER_FLAGS]
    done = run_main("prune", *flags, "--apply-solutions", "p", "--out", "run", **args)
    assert_one_line_error(done, "layer '0' has weight 32x12 there, 40x12 here")
    assert not (tmp_path / "run").exists()


def test_solve_folder_flags_that_apply_to_one_problem_are_refused(tmp_path, capsys,
                                                                  monkeypatch):
    data = [torch.randn(64, 12, generator=torch.Generator().manual_seed(0))]
    save_problems(_net(32), data, tmp_path / "p", sparsity=0.5, progress=False)
    done = run_main("solve", "p", "--sparsity", "0.5", "--out", "W.pt", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(done, "--sparsity, --out apply to one problem W")
    assert main(["solve", str(tmp_path / "p"), "--workers", "0"]) == 2
    assert not (tmp_path / "p" / "solutions").exists()


# --- untrusted files -----------------------------------------------------------------------------

def _solved(tmp_path):
    """A solved problem folder of ``_net(32)`` at 50 % and its calibration data."""
    data = [torch.randn(64, 12, generator=torch.Generator().manual_seed(0))]
    save_problems(_net(32), data, tmp_path / "p", sparsity=0.5, progress=False)
    solve_folder(tmp_path / "p", "obs", show_progress=False)
    return tmp_path / "p", data


def _tamper(folder, number, change):
    """Rewrite solution ``number`` as ``change(weight, mask)`` gives it back."""
    from safetensors.torch import load_file, save_file

    path = folder / "solutions" / f"{number:04d}.safetensors"
    saved = load_file(path)
    weight, mask = change(saved["weight"], saved["mask"])
    save_file({"weight": weight.contiguous(), "mask": mask.contiguous()}, path)


@pytest.mark.parametrize("change, words", [
    (lambda w, m: (torch.randn_like(w), torch.ones_like(m)),
     "its mask keeps 384 of 384 weights, not a support of the budget unstructured(k=192)"),
    (lambda w, m: (w.transpose(1, 2), m.transpose(1, 2)), "its weight is 1x12x32, not 1x32x12"),
    (lambda w, m: (w.reshape(1, 12, 32), m.reshape(1, 12, 32)),
     "its weight is 1x12x32, not 1x32x12"),
    (lambda w, m: (w.double(), m), "its weight is torch.float64, not torch.float32"),
    (lambda w, m: (w, m.to(torch.uint8)), "its mask is torch.uint8, not boolean"),
    (lambda w, m: (torch.where(m, w, 0.5), m), "its weight has 192 non-zeros off its mask"),
    (lambda w, m: (torch.where(m, float("nan"), w), m), "its weight has 192 NaN or Inf values"),
    (lambda w, m: (w * m.roll(1, 2), m & m.roll(1, 2)), "not a support of the budget"),
])
def test_a_tampered_solution_is_refused_naming_the_layer(tmp_path, change, words):
    folder, data = _solved(tmp_path)
    _tamper(folder, 0, change)
    model = _net(32)
    before = _state(model)
    with pytest.raises(ValueError) as info:
        apply_solutions(model, data, folder, sparsity=0.5, progress=False)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "0000.safetensors: the solution of layer '0' is refused" in message
    assert words in message
    _assert_state(model, before)


def test_the_relative_error_is_recomputed_not_read_from_the_file(tmp_path):
    folder, data = _solved(tmp_path)
    path = folder / "solutions" / "solutions.json"
    solved = json.loads(path.read_text())
    truth = [s["relative_error"] for s in solved["solutions"]]
    for entry in solved["solutions"]:
        entry["relative_error"] = 0.0
    path.write_text(json.dumps(solved))
    report = apply_solutions(_net(32), data, folder, sparsity=0.5, progress=False)
    assert [layer.relative_error for layer in report.layers] == truth
    assert min(truth) > 0.001


def test_a_tampered_solution_is_one_line_on_the_command_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "filesnet.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = dict(cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert run_main("prune", *USER_FLAGS, "--save-problems", "p", **args).returncode == 0
    assert run_main("solve", "p", "--method", "obs", "--quiet", **args).returncode == 0
    _tamper(tmp_path / "p", 1, lambda w, m: (torch.randn_like(w), torch.ones_like(m)))
    done = run_main("prune", *USER_FLAGS, "--apply-solutions", "p", "--out", "run", **args)
    assert_one_line_error(done, "the solution of layer '2' is refused",
                          "not a support of the budget")
    assert not (tmp_path / "run").exists()


def _edit_index(folder, change):
    path = folder / "index.json"
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


@pytest.mark.parametrize("path", ["../outside.safetensors", "/etc/hostname", "link.safetensors"])
def test_paths_in_a_problem_folder_stay_inside_it(tmp_path, path):
    folder, data = _solved(tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((folder / "problems" / "0000.safetensors")
                                                  .read_bytes())
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    _edit_index(folder, lambda index: index["problems"][0].update(W=path))
    for call in (lambda: solve_folder(folder, "obs", show_progress=False),
                 lambda: apply_solutions(_net(32), data, folder, sparsity=0.5, progress=False)):
        with pytest.raises(ValueError, match=f"index.json: problem 0 \\('0'\\): W must be a path "
                                             f"inside .*, got '{path}'"):
            call()


@pytest.mark.parametrize("path", ["../../outside.safetensors", "/tmp/x.safetensors"])
def test_a_solution_file_outside_the_folder_is_refused(tmp_path, path):
    folder, data = _solved(tmp_path)
    solutions = folder / "solutions" / "solutions.json"
    solved = json.loads(solutions.read_text())
    solved["solutions"][0]["file"] = path
    solutions.write_text(json.dumps(solved))
    with pytest.raises(ValueError, match="solutions.json: solution 0 \\('0'\\): file must be a "
                                         "path inside"):
        apply_solutions(_net(32), data, folder, sparsity=0.5, progress=False)


@pytest.mark.parametrize("change, words", [
    (lambda index: index["problems"][1]["budget"].update(type="Evil"),
     ["index.json: problem 1 ('2'): budget", "unknown budget type 'Evil'"]),
    (lambda index: index["problems"][0].pop("H_sha256"),
     ["index.json: problem 0 ('0'): H_sha256 must be a SHA-256 in hex, got None"]),
    (lambda index: index["problems"][0].update(shape=[1, 32]),
     ["index.json: problem 0 ('0'): shape must be [groups, out, in], got [1, 32]"]),
])
def test_a_malformed_index_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, change,
                                                       words):
    folder, _ = _solved(tmp_path)
    _edit_index(folder, change)
    done = run_main("solve", "p", "--method", "obs", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(done, *words)
