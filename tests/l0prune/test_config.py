"""The run configuration: checked once when built, the same from keywords and from a recipe,
recorded by the report, hashed for a resume."""

import pytest
import torch
from torch import nn

import l0prune
from l0prune import NM, Finetune, PerRow, PruneConfig, Structured


@pytest.mark.parametrize("config", [
    PruneConfig(sparsity=0.5),
    PruneConfig(alpha=1.05, method="obs", budget="per-row", targets=["fc.*", "conv"],
                ignore="head", sequential=False, seed=3, options={"refit": True}),
    PruneConfig(sparsity={"fc1": 0.9, "fc2": 0.25}, blockwise=False, threads=2),
    PruneConfig(budget="2:4", finetune=Finetune(epochs=2, lr=3e-4, optimizer="sgd")),
    PruneConfig(sparsity=0.5, budget=Structured(group=9), skip_incompatible=True,
                device="cpu"),
])
def test_a_recipe_reads_back_the_same_configuration(config):
    assert PruneConfig.from_toml(config.to_toml()) == config
    assert PruneConfig.from_dict(config.to_dict()) == config


def test_keywords_strings_and_objects_give_the_same_configuration():
    assert PruneConfig(sparsity=0.5, budget="per-row", targets="fc") == PruneConfig(
        sparsity=0.5, budget=PerRow(), targets=("fc",))
    assert PruneConfig(budget="2:4").budget == NM(2, 4)
    assert PruneConfig(sparsity=0.5, finetune={"epochs": 2}).finetune == Finetune(epochs=2)


@pytest.mark.parametrize(("fields", "message"), [
    ({"sparsity": 1.5}, r"sparsity must be a fraction in \[0, 1\), got 1.5"),
    ({"sparsity": {"fc": -0.1}}, r"sparsity\['fc'\] must be a fraction"),
    ({"alpha": 0.9}, "alpha must be a number >= 1, got 0.9"),
    ({"sparsity": 0.5, "method": "nope"}, "method must be one of .*, got 'nope'"),
    ({"sparsity": 0.5, "budget": "3:2"}, "N:M needs 0 < N <= M"),
    ({"sparsity": 0.5, "budget": "blocks"}, "budget must be unstructured, per-row"),
    ({"sparsity": 0.5, "targets": "("}, r"targets: '\(' is not a valid regex"),
    ({"sparsity": 0.5, "seed": "0"}, "seed must be an integer, got '0'"),
    ({"sparsity": 0.5, "threads": 0}, "threads must be a positive integer, got 0"),
    ({"sparsity": 0.5, "finetune": {"rate": 1}}, "finetune has an unknown field"),
    ({"sparsity": 0.5, "sequential": "yes"}, "sequential must be True or False, got 'yes'"),
    ({"sparsity": 0.5, "resume": True}, "resume=True needs checkpoint="),
    ({"alpha": 1.1, "checkpoint": "out"}, "checkpoint= works with a fixed budget"),
    ({"sparsity": 0.6, "budget": "2:4"}, "already fixes the sparsity"),
    ({}, "give sparsity="),
    ({"sparsity": 0.5, "device": "meta"}, "device must hold data"),
])
def test_each_bad_field_is_named_when_the_configuration_is_built(fields, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**fields)


def test_a_sparsity_that_agrees_with_an_nm_budget_is_accepted():
    assert PruneConfig(sparsity=0.5, budget="2:4").budget == NM(2, 4)
    assert PruneConfig(sparsity=0.75, budget="1:4").sparsity == 0.75


def test_the_digest_follows_what_the_model_depends_on():
    base = PruneConfig(sparsity=0.5)
    assert base.digest() == PruneConfig(sparsity=0.5, threads=4, progress=False).digest()
    assert base.digest() != base.replace(method="obs").digest()
    assert base.digest() != base.replace(sparsity=0.6).digest()
    assert base.digest() != base.replace(options={"schedule": "fast"}).digest()


def test_replace_swaps_the_target_and_checks_again():
    config = PruneConfig(sparsity=0.5)
    assert config.replace(alpha=1.05).sparsity is None
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        config.replace(threads=-1)
    with pytest.raises(TypeError, match="no field"):
        config.replace(sparsiti=0.4)


def test_the_seed_reaches_the_methods_that_take_one():
    assert PruneConfig(sparsity=0.5, method="hard_concrete", seed=7).solver_options == {
        "seed": 7}
    assert PruneConfig(sparsity=0.5, method="admm", seed=7).solver_options == {}


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    g = torch.Generator().manual_seed(1)
    return model, [(torch.randn(64, 8, generator=g), torch.randint(0, 2, (64,), generator=g))]


def test_prune_takes_a_config_or_keywords_alike_and_the_report_records_it():
    config = PruneConfig(sparsity=0.5, method="obs", progress=False)
    model, data = _model_and_data()
    report = l0prune.prune(model, data, config)
    twin, _ = _model_and_data()
    again = l0prune.prune(twin, data, sparsity=0.5, method="obs", progress=False)
    assert torch.equal(model[0].weight, twin[0].weight)
    assert report.config == again.config == config.to_dict()
    assert l0prune.PruneReport.from_json_string(report.to_json()).config == config.to_dict()
    third, _ = _model_and_data()
    assert l0prune.prune(third, data, config, sparsity=0.25).kept > report.kept


def test_an_unknown_keyword_names_the_configuration():
    model, data = _model_and_data()
    with pytest.raises(TypeError, match="prune.. got an unknown setting .*PruneConfig"):
        l0prune.prune(model, data, sparsity=0.5, spasity=0.4)
