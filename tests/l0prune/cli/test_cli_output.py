"""The output folder and files of the command line: what a run may replace, where it refuses to
write, and the permissions of what it writes."""

import json
import os
import stat

import pytest
import torch

import l0prune
from tests.l0prune.cli.conftest import USER_MODEL, assert_one_line_error, run_main

PRUNE = ["prune", "--model", "outnet:build", "--calibration", "outnet:calibration",
         "--validation", "outnet:validation", "--sparsity", "0.5", "--method", "magnitude",
         "--baseline", "none", "--finetune-epochs", "0", "--quiet"]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _run(tmp_path, capsys, monkeypatch, *args):
    (tmp_path / "outnet.py").write_text(USER_MODEL)
    return run_main(*PRUNE, *args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)


def test_a_previous_run_is_replaced_but_a_users_file_in_it_is_refused(tmp_path, capsys,
                                                                       monkeypatch):
    assert _run(tmp_path, capsys, monkeypatch, "--out", "run").returncode == 0
    assert _run(tmp_path, capsys, monkeypatch, "--out", "run").returncode == 0  # replaced
    (tmp_path / "run" / "thesis.tex").write_text("my thesis")
    (tmp_path / "run" / "data").mkdir()
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    done = _run(tmp_path, capsys, monkeypatch, "--out", "run")
    assert_one_line_error(done, "--out run: holds data/, which no l0prune run wrote there")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    assert (tmp_path / "run" / "thesis.tex").read_text() == "my thesis"


def test_a_users_folder_with_a_report_json_of_its_own_is_refused(tmp_path, capsys, monkeypatch):
    """A ``report.json`` alone once marked a folder as replaceable."""
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "report.json").write_text('{"title": "mine"}')
    (tmp_path / "paper" / "thesis.tex").write_text("keep me")
    done = _run(tmp_path, capsys, monkeypatch, "--out", "paper")
    assert_one_line_error(done, "--out paper", "not an l0prune output folder")
    assert sorted(p.name for p in (tmp_path / "paper").iterdir()) == ["report.json",
                                                                       "thesis.tex"]


@pytest.mark.parametrize("out", [".", "..", "{cwd}", "{parent}", "sub/.."])
def test_the_current_folder_and_those_above_it_are_refused_before_any_work(
    tmp_path, capsys, monkeypatch, out
):
    """Without --model the built-in model would train first: no cache folder means no work."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.setenv("L0PRUNE_CACHE", str(tmp_path / "cache"))
    out = out.format(cwd=work, parent=tmp_path)
    done = run_main("prune", "--quick", "--out", out, cwd=work, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(done, f"--out {out}: is the current folder or one above it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["sub"]


def test_the_output_folder_and_files_follow_the_umask(tmp_path, capsys, monkeypatch, umask_022):
    assert _run(tmp_path, capsys, monkeypatch, "--out", "run").returncode == 0
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    for path in (tmp_path / "run").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name

    torch.save(torch.randn(4, 8), tmp_path / "W.pt")
    done = run_main("solve", "W.pt", "--sparsity", "0.5", "--method", "magnitude", "--out",
                    "W_sparse.pt", "--quiet", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tmp_path / "W_sparse.pt").stat().st_mode) == 0o644


def test_the_reports_list_their_own_sizes(tmp_path, capsys, monkeypatch):
    assert _run(tmp_path, capsys, monkeypatch, "--out", "run").returncode == 0
    folder = tmp_path / "run"
    data = json.loads((folder / "report.json").read_text())
    assert set(data["files"]) == {p.name for p in folder.iterdir()}
    for name, size in data["files"].items():
        assert (folder / name).stat().st_size == size, name
    markdown = (folder / "report.md").read_text()
    for name in ("report.md", "report.json"):
        assert f"| {name} | {data['files'][name]:,} |" in markdown


def test_progress_on_a_pipe_is_one_plain_line_per_stage(tmp_path, capsys, monkeypatch):
    """No carriage returns or cursor codes in a log, and no line per layer of every trial: one
    line per stage (the captured stderr is not a terminal, as a pipe)."""
    monkeypatch.setattr("l0prune.pipeline.progress.EVERY", 3600.0)
    (tmp_path / "outnet.py").write_text(USER_MODEL)
    done = run_main("prune", "--model", "outnet:build", "--calibration", "outnet:calibration",
                    "--validation", "outnet:validation", "--alpha", "1.05", "--method",
                    "magnitude", "--baseline", "none", "--finetune-epochs", "0", "--out", "run",
                    cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    trials = json.loads((tmp_path / "run" / "report.json").read_text())["runs"][0]["report"][
        "trials"]
    assert len(trials) > 3
    assert done.stderr.splitlines() == ["pruning with magnitude",
                                        f"alpha search: {len(trials)} trials"]


def test_quiet_keeps_the_results_and_drops_the_progress(tmp_path, capsys, monkeypatch):
    done = _run(tmp_path, capsys, monkeypatch, "--out", "run")  # --quiet
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("magnitude: sparsity 50.0 % (")
    assert lines[1].startswith("wrote run/: layers.png (")
    with pytest.raises(SystemExit):
        run_main("prune", "--help", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert "print only the results and errors (no progress or log lines)" in " ".join(
        capsys.readouterr().out.split())


@pytest.mark.parametrize("error, free, words", [
    (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"), 0,
     "cannot write run/model.pt: [enforce fail at inline_container.cc:664] . unexpected pos "
     "64 vs 0 (disk full?)"),
    (RuntimeError("basic_ios::clear: iostream error"), 0,
     "cannot write run/model.pt: basic_ios::clear: iostream error (disk full?)"),
    (RuntimeError("basic_ios::clear: iostream error"), 1 << 30,
     "cannot write run/model.pt: basic_ios::clear: iostream error (--traceback"),
])
def test_a_failed_write_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, error, free,
                                                    words):
    import shutil

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "save", failing)
    monkeypatch.setattr("l0prune.io.files.shutil.disk_usage",
                        lambda path: shutil._ntuple_diskusage(1 << 40, (1 << 40) - free, free))
    done = _run(tmp_path, capsys, monkeypatch, "--out", "run")
    assert_one_line_error(done, words, status=1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        "outnet.py"]


def test_a_full_disk_under_a_checkpoint_names_the_block_file(tmp_path):
    import errno

    import safetensors.torch

    from tests.l0prune import tiny_hf

    pytest.importorskip("transformers")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    data = [{"input_ids": torch.randint(0, tiny_hf.VOCAB, (2, 8))}]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", full)
        with pytest.raises(OSError, match="cannot write .*block-0000.safetensors: No space "
                                          "left on device \\(disk full\\?\\)"):
            l0prune.prune(tiny_hf.model("llama"), data, sparsity=0.5, method="magnitude",
                          checkpoint=tmp_path / "ckpt", progress=False)
    assert not (tmp_path / "ckpt").exists()


def _data(alpha, kept, losses):
    from l0prune.report import LayerReport, PruneReport

    runs = []
    for method, k, loss in zip(("admm", "magnitude"), kept, losses, strict=True):
        report = PruneReport([LayerReport("fc", [10, 10], k, 100, 0.1, 0.1)], method, "u", True,
                             dense_loss=1.0, pruned_loss=loss, alpha=alpha)
        runs.append({"method": method, "report": report.to_dict(), "metrics": {}})
    comparison = {"baseline": "magnitude", "kept_vs_baseline": kept[0] / kept[1],
                  "loss_vs_baseline": losses[0] / losses[1]}
    return {"runs": runs, "comparison": comparison}


@pytest.mark.parametrize(("alpha", "kept", "losses", "verdict"), [
    (1.02, (291, 100), (1.01, 1.02),
     "magnitude kept fewer weights than admm within the same loss tolerance (alpha 1.02): "
     "100 against 291 (admm keeps 2.91x the weights magnitude keeps)"),
    (1.02, (34, 100), (1.01, 1.02),
     "admm kept fewer weights than magnitude within the same loss tolerance (alpha 1.02): "
     "34 against 100 (admm keeps 0.34x the weights magnitude keeps)"),
    (1.02, (50, 50), (1.01, 1.02),
     "admm and magnitude kept the same number of weights (50) within the same loss tolerance "
     "(alpha 1.02)"),
    (None, (50, 50), (1.5, 1.2),
     "at the same sparsity, magnitude reached a lower validation loss than admm: 1.2 against "
     "1.5 (admm's is 1.2500x magnitude's)"),
])
def test_the_headline_says_which_method_won(alpha, kept, losses, verdict):
    """The line 'admm keeps 2.91x the weights magnitude keeps' read as a win; the winner is
    now named in words."""
    from l0prune.cli.report_files import headline

    data = _data(alpha, kept, losses)
    assert headline(data)[-1] == verdict


@pytest.mark.parametrize(("dtype", "suffix"), [(torch.float16, ".pt"),
                                               (torch.bfloat16, ".safetensors")])
def test_solve_out_keeps_a_half_precision_dtype(tmp_path, capsys, monkeypatch, dtype, suffix):
    """fp16 / bf16 weights are solved in float32 and written back in their own dtype."""
    W = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    torch.save(W, tmp_path / "W.pt")
    done = run_main("solve", "W.pt", "--sparsity", "0.5", "--method", "magnitude", "--out",
                    f"W_sparse{suffix}", "--quiet", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    if suffix == ".pt":
        out = torch.load(tmp_path / "W_sparse.pt", weights_only=True)
    else:
        from safetensors.torch import load_file

        out = load_file(str(tmp_path / "W_sparse.safetensors"))["weight"]
    assert out.dtype == dtype
    kept = W.float().abs() > W.float().abs().flatten().kthvalue(64).values  # the top 64
    assert torch.equal(out, torch.where(kept, W, torch.zeros_like(W)))


@pytest.mark.parametrize("foreign", ["thesis.tex", "sub/", "obs/notes.txt"])
def test_a_partial_folder_holding_a_users_file_is_refused_and_kept(tmp_path, capsys,
                                                                   monkeypatch, foreign):
    """OUT.partial/ once went wholesale after every successful run, whoever made it."""
    partial = tmp_path / "run.partial"
    (partial / "obs").mkdir(parents=True)
    (partial / "obs" / "settings.json").write_text("{}")
    path = partial / foreign
    if foreign.endswith("/"):
        path.mkdir()
    else:
        path.write_text("precious")
    done = _run(tmp_path, capsys, monkeypatch, "--out", "run")
    assert_one_line_error(done, f"run.partial/ holds {foreign.rstrip('/')}, which no l0prune "
                                "run wrote there")
    assert path.exists() and not (tmp_path / "run").exists()
    assert foreign.endswith("/") or path.read_text() == "precious"


def test_only_what_checkpoints_wrote_is_removed_from_a_partial_folder(tmp_path):
    from l0prune.pipeline.resume import foreign_entry, remove_checkpoints

    root = tmp_path / "run.partial"
    (root / "obs").mkdir(parents=True)
    for name in ("settings.json", "block-0000.safetensors", ".block-0001.safetensors.partial",
                 ".tmpAb12Cd"):
        (root / "obs" / name).write_text("")
    assert foreign_entry(root, ["obs"]) is None
    remove_checkpoints(root, ["obs"])
    assert not root.exists()
    (root / "obs").mkdir(parents=True)
    (root / "obs" / "block-0000.safetensors").write_text("")
    (root / "obs" / "notes.txt").write_text("mine")
    assert foreign_entry(root, ["obs"]) == "obs/notes.txt"
    remove_checkpoints(root, ["obs"])
    assert [p.name for p in (root / "obs").iterdir()] == ["notes.txt"]


def test_a_users_file_deep_inside_a_previous_runs_folder_is_refused(tmp_path, monkeypatch):
    """The manifest once covered the top level only: model/notes.txt went with the model."""
    from l0prune.cli import report_files
    from l0prune.cli.errors import UsageError
    from l0prune.cli.output_dir import check_destination

    monkeypatch.setattr(report_files, "markdown", lambda data: "")  # the manifest alone

    out = tmp_path / "gpt2-run"
    (out / "model" / "tokenizer").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "model" / "tokenizer" / "vocab.json").write_text("{}")
    report_files.write_reports(out, {"files": {}})
    check_destination(out)  # all its own: replaceable
    assert json.loads((out / "report.json").read_text())["contents"] == [
        "model/config.json", "model/tokenizer/vocab.json"]
    (out / "model" / "tokenizer" / "notes.txt").write_text("n")
    with pytest.raises(UsageError, match="holds model/tokenizer/notes.txt, which no l0prune"):
        check_destination(out)
