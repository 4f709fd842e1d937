"""The causal-LM loss and the perplexity in the report."""

import math

import pytest
import torch

import l0prune
from l0prune.data.perplexity import next_token_nll, perplexity_ratio_bound
from tests.l0prune import tiny_hf


def test_next_token_nll_equals_the_models_own_loss():
    pytest.importorskip("transformers")
    model = tiny_hf.model("llama")
    ids = torch.randint(0, tiny_hf.VOCAB, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model(ids, labels=ids)
    assert next_token_nll(outputs, {"input_ids": ids}).item() == pytest.approx(
        outputs.loss.item(), rel=1e-6)


def test_next_token_nll_is_token_weighted_and_skips_padding_and_ignored_labels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    logp = torch.log_softmax(logits, dim=-1)
    per_token = -logp[:, :-1].gather(2, ids[:, 1:, None])[..., 0]  # 2 x 4
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    value = next_token_nll(logits, {"input_ids": ids, "attention_mask": mask})
    expected = (per_token[0].sum() + per_token[1, :2].sum()) / 6
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    labels = ids.clone()
    labels[0, 2] = -100
    value = next_token_nll(logits, {"input_ids": ids, "labels": labels})
    expected = (per_token.sum() - per_token[0, 1]) / 7
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_report_gives_perplexities_for_the_next_token_loss():
    pytest.importorskip("transformers")
    model = tiny_hf.model("gpt2")
    g = torch.Generator().manual_seed(2)
    windows = [{"input_ids": torch.randint(0, tiny_hf.VOCAB, (1, 16), generator=g)}
               for _ in range(4)]
    report = l0prune.prune(model, windows[:2], sparsity=0.5, validation=windows[2:],
                           loss_fn=l0prune.next_token_nll, method="wanda", progress=False)
    assert report.perplexity
    with torch.no_grad():
        losses = [next_token_nll(model(**w), w).item() for w in windows[2:]]
    assert report.pruned_perplexity == pytest.approx(math.exp(sum(losses) / 2), rel=1e-6)
    assert report.dense_perplexity == pytest.approx(math.exp(report.dense_loss))
    assert report.perplexity_ratio == pytest.approx(
        math.exp(report.pruned_loss - report.dense_loss))
    assert f"(ratio {report.perplexity_ratio:.4f})" in report.summary()
    data = report.to_dict()
    assert data["pruned_perplexity"] == report.pruned_perplexity
    assert l0prune.PruneReport.from_dict(data).perplexity_ratio == report.perplexity_ratio
    plain = l0prune.prune(tiny_hf.model("gpt2"), windows[:2], sparsity=0.5,
                          validation=windows[2:], loss_fn=lambda o, b: next_token_nll(o, b),
                          method="wanda", progress=False)
    assert not plain.perplexity and plain.dense_perplexity is None


def test_alpha_bounds_the_perplexity_ratio_by_a_power_of_the_perplexity():
    dense_loss, alpha = math.log(20.0), 1.02
    assert math.exp(alpha * dense_loss - dense_loss) == pytest.approx(
        perplexity_ratio_bound(20.0, alpha))
    assert perplexity_ratio_bound(20.0, alpha) == pytest.approx(1.0617, abs=1e-4)
