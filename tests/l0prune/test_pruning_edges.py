"""prune() on inputs first users hit: a device that is not there, dead calibration data, a
structured budget on a one-channel convolution."""

import re

import pytest
import torch
from torch import nn

import l0prune
import l0prune.pipeline.session
from l0prune import Structured


def _small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 2))
    data = [(torch.randn(32, 8), torch.randint(0, 2, (32,))) for _ in range(2)]
    return model, data


def _values(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_as_before(model, values, ids):
    assert l0prune.masks_of(model) == {}
    assert [id(p) for p in model.parameters()] == ids
    for key, value in model.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, values[key]), key


@pytest.mark.parametrize(
    ("device", "message"),
    [("meta", "device must hold data.*got 'meta'"),
     ("cuda:63", "device 'cuda:63' is not available here")],
)
def test_a_device_that_cannot_run_is_a_value_error_and_changes_nothing(device, message):
    model, data = _small()
    values, ids = _values(model), [id(p) for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        l0prune.prune(model, data, sparsity=0.5, device=device, progress=False)
    _assert_as_before(model, values, ids)


def test_a_run_that_fails_after_the_move_puts_the_model_back(monkeypatch):
    """The snapshot is taken before the move. Here the "move" gives every tensor new storage
    full of NaN (as a move to a device that loses the values would), the run then fails on the
    NaN, and the model is back as it was: same objects, same values."""
    model, data = _small()
    values, ids = _values(model), [id(p) for p in model.parameters()]

    def lossy_move(module, device):
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.data = torch.full_like(tensor, float("nan"))

    monkeypatch.setattr(l0prune.pipeline.session, "move", lossy_move)
    with pytest.raises(ValueError, match="target '0' has 128 NaN or Inf values in its weight"):
        l0prune.prune(model, data, sparsity=0.5, progress=False)
    _assert_as_before(model, values, ids)


@pytest.mark.parametrize("method", ["admm", "iht", "hard_concrete", "obs", "magnitude"])
def test_dead_calibration_data_keeps_the_budget_and_the_weights(method):
    """All-zero inputs give ``H = 0`` for the first layer: every answer is optimal there, and
    the layer keeps its budget's count of trained weights instead of becoming zero."""
    model, _ = _small()
    dense = model[0].weight.detach().clone()
    data = [(torch.zeros(32, 8), torch.randint(0, 2, (32,)))]
    options = {"steps": 200} if method == "hard_concrete" else None
    report = l0prune.prune(model, data, sparsity=0.5, method=method, options=options,
                           progress=False)
    first = report.layers[0]
    assert (first.name, first.kept, first.total) == ("0", 64, 128)
    mask = l0prune.mask_of(model[0])
    assert int(mask.sum()) == 64
    assert torch.equal(model[0].weight[mask], dense[mask])


def test_structured_keeps_one_channel_of_a_one_channel_convolution(digits_cnn_trained):
    """The digits CNN's first convolution has one input channel (16 x 9 weights, one group of
    9 columns): rounding 50 % of one group to 0 removed the whole layer; it now stays dense."""
    import copy

    model, data = digits_cnn_trained
    model = copy.deepcopy(model)
    calibration = data.loader("train", batch_size=256)
    report = l0prune.prune(model, calibration, sparsity=0.5, budget=Structured(),
                           method="magnitude", progress=False)
    layers = {layer.name: layer for layer in report.layers}
    assert (layers["0"].kept, layers["0"].total) == (144, 144)
    assert layers["2"].kept == 32 * 8 * 9  # 16 input channels: 8 kept
    sized = l0prune.prune(copy.deepcopy(digits_cnn_trained[0]), calibration,
                          budget=Structured(sparsity=0.9), method="magnitude", progress=False)
    assert all(layer.kept > 0 for layer in sized.layers)
    assert {layer.name: layer.kept for layer in sized.layers}["0"] == 144


def test_conv1d_shapes_are_reported_out_x_in_like_linear():
    """GPT-2's ``Conv1D`` stores its weight in x out; reports show every layer out x in."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=1,
                                     n_head=2)
    model = transformers.GPT2Model(config).eval()
    batches = [{"input_ids": torch.randint(0, 97, (4, 10))}]
    report = l0prune.prune(model, batches, sparsity=0.5, method="magnitude", sequential=False,
                           progress=False)
    shapes = {layer.name: layer.shape for layer in report.layers}
    assert shapes == {"h.0.attn.c_attn": [96, 32], "h.0.attn.c_proj": [32, 32],
                      "h.0.mlp.c_fc": [128, 32]}
    assert "| h.0.mlp.c_fc | 128x32 |" in report.table()


def _six_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                          nn.Linear(8, 2))
    return model, [(torch.randn(32, 6), torch.randint(0, 2, (32,)))]


def test_an_nm_budget_that_does_not_fit_names_the_layer_and_the_ways_out():
    model, data = _six_inputs()
    values, ids = _values(model), [id(p) for p in model.parameters()]
    with pytest.raises(l0prune.pruning.IncompatibleBudget) as caught:
        l0prune.prune(model, data, budget=l0prune.NM(2, 4), progress=False)
    message = str(caught.value)
    assert message.startswith("budget 2:4 does not fit layer '0' (weight 16x6): ")
    assert "ignore=['0']" in message and "skip_incompatible=True" in message
    assert "sparsity=None" not in message
    _assert_as_before(model, values, ids)


def test_skip_incompatible_leaves_those_layers_dense_with_a_warning():
    model, data = _six_inputs()
    dense = model[0].weight.detach().clone()
    with pytest.warns(UserWarning, match="layer '0' left dense: N:M budget 2:4 needs"):
        report = l0prune.prune(model, data, budget=l0prune.NM(2, 4), skip_incompatible=True,
                               progress=False)
    assert list(report.skipped) == ["0"]
    assert [layer.name for layer in report.layers] == ["2"]
    assert torch.equal(model[0].weight, dense) and l0prune.mask_of(model[0]) is None
    groups = l0prune.mask_of(model[2]).reshape(8, 4, 4).sum(dim=-1)
    assert torch.equal(groups, torch.full((8, 4), 2))
    assert "left dense, the budget does not fit them: 0" in report.summary()


@pytest.mark.parametrize(("what", "batch", "got"), [
    ("calibration", torch.randn(32, 8, dtype=torch.float64), "got shape (32, 8), torch.float64"),
    ("calibration", torch.randn(32, 9), "got shape (32, 9), torch.float32"),
    ("validation", torch.randn(32, 8).half(), "got shape (32, 8), torch.float16"),
])
def test_a_batch_that_does_not_fit_names_the_layer_and_the_input_it_expects(what, batch, got):
    """Torch alone says 'mat1 and mat2 must have the same dtype' with no layer named."""
    model, data = _small()
    values, ids = _values(model), [id(p) for p in model.parameters()]
    bad = [(batch, torch.randint(0, 2, (32,)))]
    kwargs = {"calibration": bad} if what == "calibration" else {"calibration": data,
                                                                 "validation": bad}
    with pytest.raises(ValueError, match=(
        f"^the {what} batch does not fit layer '0' \\(Linear\\): it expects input with 8 "
        f"features in the last dimension, torch.float32; {re.escape(got)} \\(mat1 and mat2")):
        l0prune.prune(model, sparsity=0.5, progress=False, **kwargs)
    _assert_as_before(model, values, ids)


def test_a_convolution_names_its_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\): it expects input with 3 "
                                         r"channels in dimension 1, torch.float32; got shape "
                                         r"\(2, 1, 8, 8\)"):
        l0prune.prune(model, [(torch.randn(2, 1, 8, 8), torch.zeros(2).long())], sparsity=0.5,
                      progress=False)
