"""The memory check: a run whose statistics and solves cannot fit is refused before any work,
in one line naming the layer, the size and the ways out; the model is left as it was."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import l0prune
from l0prune.model.statistics import Discovery
from l0prune.model.targets import Target
from l0prune.pipeline import footprint


def _wide(inputs: int):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def _forward_counter(model):
    calls = []
    model[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


def _assert_one_line_refusal(err, layer, *words):
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"layer {layer!r} needs about ")
    for word in (f"ignore=[{layer!r}]", f"--ignore {layer}", "magnitude", "wanda", *words):
        assert word in message, word


def test_a_layer_whose_H_no_machine_holds_is_refused_before_any_statistics():
    """A million inputs ask for an 8.8 TB float64 ``H``: refused after the one discovery
    forward, not by the allocator once the calibration pass has started."""
    model = _wide(1 << 20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = _forward_counter(model)
    with pytest.raises(ValueError) as err:
        l0prune.prune(model, [torch.randn(2, 1 << 20)], sparsity=0.5, method="obs",
                      progress=False)
    _assert_one_line_refusal(err, "0", "a float64 H of 1,048,576 x 1,048,576", "h_block=")
    assert len(calls) == 1  # the discovery pass only
    assert not torch_prune.is_pruned(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_check_measures_against_the_memory_available(monkeypatch):
    """With the memory available mocked below what ``H`` and the solve need: refused, naming a
    block width whose run fits; that width runs; magnitude and Wanda (no ``H``, its diagonal)
    run on the same memory."""
    monkeypatch.setattr(footprint, "available_memory", lambda device: 60 * 10**6)
    data = [torch.randn(32, 2048) for _ in range(2)]
    model = _wide(2048)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        l0prune.prune(model, data, sparsity=0.5, method="admm", progress=False)
    _assert_one_line_refusal(err, "0", "a float64 H of 2,048 x 2,048", "60 MB are free on cpu")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    width = int(str(err.value).split("h_block=")[1].split()[0])
    report = l0prune.prune(model, data, sparsity=0.5, method="admm", h_block=width,
                           progress=False)
    assert report.config["h_block"] == width and report.sparsity == pytest.approx(0.5)
    for method in ("magnitude", "wanda"):
        report = l0prune.prune(_wide(2048), data, sparsity=0.5, method=method, progress=False)
        assert report.sparsity == pytest.approx(0.5)


def test_gradual_is_checked_too(monkeypatch):
    monkeypatch.setattr(footprint, "available_memory", lambda device: 10**6)
    data = [(torch.randn(8, 2048), torch.randint(0, 2, (8,)))]
    model = _wide(2048)
    with pytest.raises(ValueError) as err:
        l0prune.gradual(model, data, sparsity=0.5, validation=data, steps=2, method="obs",
                        progress=False)
    _assert_one_line_refusal(err, "0", "1 MB are free on cpu")
    assert not torch_prune.is_pruned(model)


def test_the_estimate_is_the_statistics_and_the_measured_working_memory():
    """One layer of 1,000 inputs and 10 rows: its float64 ``H`` (its blocks' squares with
    ``h_block``), and the solve's measured working memory per ``b^2`` and per ``o b``: what
    every block's problem keeps, and the widest block's peak above that."""
    layer = Target("fc", nn.Linear(1000, 10))
    discovery = Discovery(["fc"], {"fc": 1}, {"fc": 0}, {"fc": 0})
    cost = footprint.WORKING["obs"]

    def total(blocks=None):
        return footprint.estimate([layer], discovery, statistics="full", method="obs",
                                  sequential=False, fixed=True, blocks=blocks).total

    def solve(widths):
        kept = sum(cost.kept[0] * b * b + cost.kept[1] * 10 * b for b in widths)
        b = max(widths)
        return kept + (cost.peak[0] - cost.kept[0]) * b * b + (cost.peak[1] - cost.kept[1]) * 10 * b

    assert total() == pytest.approx(8 * 1000**2 + solve([1000]))
    assert total({"fc": (0, 500, 1000)}) == pytest.approx(8 * 2 * 500**2 + solve([500, 500]))


def test_paired_statistics_count_what_each_group_keeps():
    """Sequential: the first group's ``H`` alone; a later group that pairs with its (fewer)
    outputs adds ``G`` (out x in), one that pairs with its inputs ``C`` (in x in), one with
    column blocks a ``C`` per block; the whole-model path holds them all to the end."""
    first = Target("a", nn.Linear(100, 300))
    discovery = Discovery(["a", "b"], {"a": 1, "b": 1}, {"a": 0, "b": 1}, {"a": 0, "b": 0})

    def statistics(second, blocks=None, sequential=True):
        return footprint.estimate([first, second], discovery, statistics="full",
                                  method="magnitude", sequential=sequential, fixed=True,
                                  blocks=blocks).total

    narrow, wide = Target("b", nn.Linear(300, 10)), Target("b", nn.Linear(300, 400))
    base = 8 * (100**2 + 300**2)
    extra = {"b": 9 * 10 * 300 + 8 * 10 * 300, "w": 9 * 400 * 300 + 8 * 400 * 300}
    assert statistics(narrow) == pytest.approx(base + 8 * 10 * 300 + extra["b"])
    assert statistics(wide) == pytest.approx(base + 8 * 300**2 + extra["w"])
    halves = 8 * (100**2 + 2 * 2 * 150**2)
    blocked = 9 * 10 * 300 + 8 * 10 * 150  # the peak above what is kept: the widest block's
    assert statistics(narrow, {"b": (0, 150, 300)}) == pytest.approx(halves + blocked)
