"""Targets: weight <-> matrix views, input rows (patches) that reproduce each layer, selection."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from l0prune.model.targets import Target, layer_types, prunable_layers, select_targets

CONVS = [
    nn.Conv2d(4, 6, 3, padding=1),
    nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(1, 2), padding=(2, 1)),
    nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect", groups=2),
    nn.Conv2d(6, 6, 3, groups=6, padding_mode="circular", padding=1),
    nn.Conv1d(4, 8, 3, padding=2, dilation=2),
    nn.Conv1d(4, 8, 5, stride=2, groups=4, padding="valid"),
]


def _layer_output_from_rows(target: Target, x: torch.Tensor) -> torch.Tensor:
    """``W_g @ rows_g`` per convolution group, arranged like the layer's output channels."""
    W = target.matrix(target.module.weight.detach())  # groups x rows x cols
    X = target.rows(x)  # n x groups*cols
    X = X.reshape(X.shape[0], target.groups, -1)
    return torch.einsum("grc,ngc->ngr", W, X).reshape(X.shape[0], -1)


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: repr(c))
def test_conv_rows_reproduce_the_convolution(conv):
    torch.manual_seed(0)
    spatial = (9, 7) if isinstance(conv, nn.Conv2d) else (11,)
    x = torch.randn(2, conv.in_channels, *spatial)
    target = Target("conv", conv)
    with torch.no_grad():
        out = conv(x) - conv.bias.reshape(1, -1, *([1] * len(spatial)))
    expected = out.movedim(1, -1).reshape(-1, conv.out_channels)
    assert torch.allclose(_layer_output_from_rows(target, x), expected, atol=1e-5)
    assert target.shape == (conv.out_channels // conv.groups,
                            conv.in_channels // conv.groups * target.kernel)


def test_unbatched_conv_input():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(3, 6, 6)
    target = Target("c", conv)
    assert torch.equal(target.rows(x), target.rows(x.unsqueeze(0)))


def test_linear_rows_drop_padding():
    target = Target("fc", nn.Linear(5, 3))
    x = torch.randn(2, 4, 5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    rows = target.rows(x, mask)
    assert torch.equal(rows, torch.cat([x[0, :2], x[1, :3]]))
    assert target.rows(x).shape == (8, 5)
    # Inputs that are not batch x sequence x features keep every row.
    assert target.rows(x[:, 0], mask).shape == (2, 5)


@pytest.mark.parametrize(
    "module",
    [nn.Linear(5, 3), nn.Conv2d(4, 6, 3, groups=2), nn.Conv1d(2, 4, 3)],
    ids=["linear", "grouped-conv2d", "conv1d"],
)
def test_matrix_round_trip(module):
    target = Target("m", module)
    W = module.weight.detach()
    M = target.matrix(W)
    assert M.shape == (target.groups, *target.shape)
    assert torch.equal(target.unmatrix(M), W)
    assert target.total == W.numel()


def test_hugging_face_conv1d():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    assert Conv1D in layer_types()
    layer = Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs; weight stored 4 x 6
    torch.manual_seed(0)
    nn.init.normal_(layer.weight)
    target = Target("c_attn", layer)
    assert target.shape == (6, 4) and target.is_transposed
    x = torch.randn(3, 5, 4)
    with torch.no_grad():
        out = layer(x) - layer.bias
    rows = target.rows(x)
    assert torch.allclose(rows @ target.matrix(layer.weight.detach())[0].T, out.reshape(-1, 6),
                          atol=1e-5)
    assert torch.equal(target.unmatrix(target.matrix(layer.weight.detach())), layer.weight)


def _model():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3),
    )


def test_default_targets_skip_the_output_head():
    model = _model()
    executed = list(prunable_layers(model))
    assert executed == ["0", "3", "5", "7"]
    assert [t.name for t in select_targets(model, executed)] == ["0", "3", "5"]


def test_patterns_match_whole_names():
    model = _model()
    executed = ["0", "3", "5", "7"]
    assert [t.name for t in select_targets(model, executed, "[35]")] == ["3", "5"]
    assert [t.name for t in select_targets(model, executed, ["7", "0"])] == ["0", "7"]
    assert [t.name for t in select_targets(model, executed, ".*", ignore="0")] == ["3", "5", "7"]
    assert [t.name for t in select_targets(model, executed, ignore=["3"])] == ["0", "5"]


@pytest.mark.parametrize(
    "targets, ignore, message",
    [
        ("9", None, "matches no module name"),
        ("1", None, "matches no prunable layer"),
        (None, "nope", "ignore pattern 'nope' matches no module"),
        ("3", "3", "no layer to prune"),
        ("[", None, "not a valid regex"),
        (3, None, "a regex, a .re:. regex or a class name, or a list of them, got int"),
    ],
)
def test_selection_errors(targets, ignore, message):
    with pytest.raises(ValueError, match=message):
        select_targets(_model(), ["0", "3", "5", "7"], targets, ignore)


def test_a_layer_that_never_runs_cannot_be_a_target():
    with pytest.raises(ValueError, match="never run"):
        select_targets(_model(), ["0", "3", "7"], "5")


def test_already_pruned_and_tied_targets_are_refused():
    model = _model()
    torch_prune.l1_unstructured(model[3], "weight", amount=0.5)
    with pytest.raises(ValueError, match="already pruned"):
        select_targets(model, ["0", "3", "5", "7"])
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="share one weight"):
        select_targets(tied, ["0", "1", "2"])


def test_a_tied_head_is_refused_naming_the_embedding_and_nothing_changes():
    transformers = pytest.importorskip("transformers")
    import l0prune

    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16)).eval()
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    embedding = gpt2.transformer.wte.weight.detach().clone()
    calibration = [{"input_ids": torch.randint(0, 64, (2, 8))}]
    with pytest.raises(ValueError) as info:
        l0prune.prune(gpt2, calibration, sparsity=0.5, targets=["lm_head"], progress=False)
    assert str(info.value).startswith("target 'lm_head' shares its weight with "
                                      "'transformer.wte.weight', which is not a target")
    assert torch.equal(gpt2.transformer.wte.weight, embedding)
    assert not torch_prune.is_pruned(gpt2)
    report = l0prune.prune(gpt2, calibration, sparsity=0.5, progress=False)  # head left out
    assert "lm_head" not in [layer.name for layer in report.layers]
    assert torch.equal(gpt2.transformer.wte.weight, embedding)


def test_a_weight_shared_by_two_modules_is_refused_unless_both_are_chosen_together():
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="target '0' shares its weight with '2.weight'"):
        select_targets(model, ["0", "2", "4"], targets=["0"])
    with pytest.raises(ValueError, match="targets '0' and '2' share one weight tensor"):
        select_targets(model, ["0", "2", "4"])


def test_a_nan_weight_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[2].weight[3, 1] = float("nan")
        model[2].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="target '2' has 2 NaN or Inf values in its weight"):
        select_targets(model, ["0", "2", "4"])
    assert [t.name for t in select_targets(model, ["0", "2", "4"], ignore="2")] == ["0"]


def test_class_names_and_re_prefixed_regexes_select_as_llm_compressor_does(caplog):
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(1, 1, 1), nn.Linear(4, 2))
    executed = ["0", "1", "2"]
    assert [t.name for t in select_targets(model, executed, ["Linear"])] == ["0", "2"]
    assert [t.name for t in select_targets(model, executed, "Module", ignore="Conv1d")] == [
        "0", "2"]
    assert [t.name for t in select_targets(model, executed, "re:[01]")] == ["0", "1"]
    # re: matches from the start of the name, as re.match does
    named = nn.ModuleDict({"mlp": nn.Linear(2, 2), "head": nn.Linear(2, 2)})
    with caplog.at_level("INFO", logger="l0prune.targets"):
        chosen = select_targets(named, ["mlp", "head"], "re:.*", ignore=["re:.*hea"])
    assert [t.name for t in chosen] == ["mlp"]
    assert caplog.messages == ["targets 're:.*' selects mlp, head",
                               "ignore 're:.*hea' selects head"]


def test_a_pattern_that_selects_nothing_says_what_patterns_are():
    with pytest.raises(ValueError, match=r"targets pattern 'Linearr' matches no module name or "
                                         r"class .* 're:' and a regex .* a class name such as "
                                         r"'Linear'\); its prunable layers are named like "
                                         r"\['0', '3', '5'\] and of class Conv2d, Linear"):
        select_targets(_model(), ["0", "3", "5", "7"], "Linearr")
    with pytest.raises(ValueError, match="'re:\\(' is not a valid regex"):
        select_targets(_model(), ["0", "3", "5", "7"], "re:(")
