"""``l0prune prune`` run as a user runs it, on the built-in digits CNN with a reduced budget and on
a model of their own; the files it writes are checked against each other and against a reload."""

import importlib.util
import json

import matplotlib.image
import pytest
import torch

from l0prune import load_sparse
from l0prune.data.batches import cross_entropy, mean_loss
from l0prune.demo.digits import accuracy, digits_cnn, load_digits_data
from tests.l0prune.cli.conftest import USER_MODEL, run_cli

OUTPUTS = {
    "report.json", "report.md", "recipe.toml", "sparsity_vs_loss.png", "layers.png", "model.pt",
    "model.sparse.pt",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache per module: the quick built-in model trains once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def quick(tmp_path_factory, cache):
    """The built-in default at a fixed sparsity, 5 training epochs, 1 finetuning epoch."""
    cwd = tmp_path_factory.mktemp("quick")
    done = run_cli("prune", "--quick", "--sparsity", 0.6, "--out", "run", "--json", "--quiet",
                   cwd=cwd, cache=cache)
    assert done.returncode == 0, done.stderr
    return cwd / "run", done


def test_writes_every_output_and_prints_the_json_report(quick):
    folder, done = quick
    assert {p.name for p in folder.iterdir()} == OUTPUTS
    assert json.loads(done.stdout) == json.loads((folder / "report.json").read_text())
    assert done.stderr == ""  # --quiet


def test_markdown_shows_the_figures_of_the_json(quick):
    folder, _ = quick
    data = json.loads((folder / "report.json").read_text())
    text = (folder / "report.md").read_text()
    assert [run["method"] for run in data["runs"]] == ["admm", "magnitude"]
    for run in data["runs"]:
        report = run["report"]
        assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)
        assert f"{100 * report['sparsity']:.1f} %" in text
        assert f"{report['kept']:,}" in text
        assert f"{report['pruned_loss'] / report['dense_loss']:.4f}" in text
        assert f"{run['metrics']['test accuracy']:.4f}" in text
        for layer in report["layers"]:
            assert f"| {layer['name']} |" in text
            assert f"{layer['relative_error']:.3e}" in text
    comparison = data["comparison"]
    assert f"{comparison['loss_vs_baseline']:.4f}x magnitude's" in text
    for name, size in data["files"].items():
        assert (folder / name).stat().st_size == size
        assert f"| {name} | {size:,} |" in text
    assert f"{data['seconds']:.1f} s" in text


def test_plots_are_png_images(quick):
    folder, _ = quick
    for name in ("sparsity_vs_loss.png", "layers.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(folder / name).shape
        assert height > 300 and width > 600


def test_exported_state_dict_reproduces_the_pruned_model(quick):
    folder, _ = quick
    data = json.loads((folder / "report.json").read_text())
    pruned = data["runs"][0]
    state = torch.load(folder / "model.pt", weights_only=True)
    sparse = load_sparse(folder / "model.sparse.pt")
    assert state.keys() == sparse.keys()
    assert all(torch.equal(state[k], sparse[k]) for k in state)

    model = digits_cnn()
    model.load_state_dict(state)  # strict: the dense model's keys
    model.eval()
    digits = load_digits_data(seed=0)
    loss = mean_loss(model, digits.loader("val"), cross_entropy, torch.device("cpu"))
    assert loss == pytest.approx(pruned["report"]["pruned_loss"], rel=1e-5)
    assert accuracy(model, digits.loader("test")) == pruned["metrics"]["test accuracy"]
    for layer in pruned["report"]["layers"]:
        assert int((state[f"{layer['name']}.weight"] != 0).sum()) == layer["kept"]


def test_recipe_repeats_the_run_and_replaces_the_folder(quick, cache):
    folder, _ = quick
    recipe = (folder / "recipe.toml").read_text().splitlines()
    assert {"sparsity = 0.6", "quick = true", 'out = "run"'} <= set(recipe)
    before = json.loads((folder / "report.json").read_text())
    done = run_cli("prune", "--config", folder / "recipe.toml", "--quiet", cwd=folder.parent,
                   cache=cache)
    assert done.returncode == 0, done.stderr
    after = json.loads((folder / "report.json").read_text())
    assert after["command"] != before["command"]
    for old, new in zip(before["runs"], after["runs"], strict=True):
        assert new["report"]["kept"] == old["report"]["kept"]
        assert new["report"]["pruned_loss"] == pytest.approx(old["report"]["pruned_loss"])
    assert sorted(p.name for p in folder.parent.iterdir()) == ["run"]  # no temporary left


def test_alpha_search_draws_its_path(tmp_path, cache):
    done = run_cli("prune", "--quick", "--alpha", 1.05, "--method", "wanda", "--no-sequential",
                   "--finetune-epochs", 0, "--out", "run", cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stderr
    assert "within the same loss tolerance (alpha 1.05)" in done.stdout
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    for run in data["runs"]:
        report = run["report"]
        assert len(report["trials"]) > 3
        assert report["pruned_loss"] <= 1.05 * report["dense_loss"]
    assert data["recipe"]["alpha"] == 1.05 and "sparsity" not in data["recipe"]
    assert "### Search: wanda" in (tmp_path / "run" / "report.md").read_text()


def test_users_own_model_from_module_references(tmp_path):
    (tmp_path / "mynet.py").write_text(USER_MODEL)
    done = run_cli(
        "prune", "--model", "mynet:build", "--calibration", "mynet:calibration",
        "--validation", "mynet.py:validation", "--loss", "mynet:half_mse", "--sparsity", 0.5,
        "--method", "obs", "--targets", "0", "2", "--finetune-epochs", 2, "--threads", 1,
        "--out", "out", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["model"].startswith("mynet:build")
    assert [layer["name"] for layer in data["runs"][0]["report"]["layers"]] == ["0", "2"]
    assert data["runs"][0]["report"]["finetune_steps"] == 4
    spec = importlib.util.spec_from_file_location("mynet", tmp_path / "mynet.py")
    mynet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mynet)
    model = mynet.build()
    model.load_state_dict(torch.load(tmp_path / "out" / "model.pt", weights_only=True))
    loss = mean_loss(model.eval(), mynet.validation(), mynet.half_mse, torch.device("cpu"))
    assert loss == pytest.approx(data["runs"][0]["report"]["pruned_loss"], rel=1e-5)


def test_cache_folder_and_key(quick, cache, tmp_path, monkeypatch):
    from l0prune.cli.default_model import cache_dir

    assert [p.name.split("-")[-2:] for p in cache.iterdir()] == [["seed0", "epochs5.pt"]]
    monkeypatch.delenv("L0PRUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "l0prune"
    monkeypatch.setenv("L0PRUNE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
