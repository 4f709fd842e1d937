"""llm-compressor's way of saying what to prune works here: class names and ``re:`` regexes as
targets, the budget as text, ``mask_structure`` for it, a sparsity that agrees with N:M."""

import pytest
import torch

import l0prune
from tests.l0prune import tiny_hf

pytest.importorskip("transformers")


def _windows(n=2, length=16):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, tiny_hf.VOCAB, (1, length), generator=g)}
            for _ in range(n)]


def _pruned_names(model):
    return sorted(l0prune.masks_of(model))


def _run(kind, **settings):
    model = tiny_hf.model(kind)
    report = l0prune.prune(model, _windows(), method="magnitude", progress=False, **settings)
    return model, report


def test_class_names_select_layers_and_ignore_leaves_the_head():
    model, _ = _run("llama", sparsity=0.5, targets=["Linear"], ignore=["lm_head"])
    linear = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    assert "lm_head" in linear and _pruned_names(model) == [n for n in linear if n != "lm_head"]
    gpt2, _ = _run("gpt2", sparsity=0.5, targets="Conv1D")
    assert _pruned_names(gpt2) == sorted(
        f"transformer.h.{i}.{layer}" for i in range(2)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))


def test_re_prefixed_regexes_select_from_the_start_of_the_name():
    model, _ = _run("llama", sparsity=0.5, targets="re:.*mlp.*", ignore=["re:.*down_proj"])
    assert _pruned_names(model) == sorted(f"model.layers.{i}.mlp.{p}" for i in range(2)
                                          for p in ("gate_proj", "up_proj"))


@pytest.mark.parametrize("settings", [{"budget": "2:4"}, {"mask_structure": "2:4"},
                                      {"sparsity": 0.5, "mask_structure": "2:4"},
                                      {"sparsity": 0.5, "budget": l0prune.NM(2, 4)}])
def test_two_four_in_llm_compressors_words(settings):
    model, report = _run("llama", **settings)
    assert report.budget == "2:4" and report.sparsity == pytest.approx(0.5)
    weight = model.model.layers[0].mlp.up_proj.weight.detach()
    assert bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def test_mask_structure_0_0_is_unstructured_and_not_with_budget():
    _, report = _run("llama", sparsity=0.5, mask_structure="0:0")
    assert report.budget == "unstructured"
    with pytest.raises(ValueError, match="give budget= or mask_structure= .*, not both"):
        _run("llama", budget="2:4", mask_structure="2:4")


def test_a_target_that_selects_nothing_says_what_a_target_is():
    with pytest.raises(ValueError, match="targets pattern 'mlp' matches no module name or class "
                                         ".* such as 're:.*mlp'"):
        _run("llama", sparsity=0.5, targets="mlp")
