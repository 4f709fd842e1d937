"""prune(): the whole run on digits models, a tiny BERT and GPT-2, against the solvers' truth."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import l0prune
from l0prune import NM, Finetune, Structured
from l0prune.data.batches import cross_entropy, mean_loss
from l0prune.demo.digits import digits_cnn
from l0prune.model.masks import masked_weight, permanent_state_dict
from l0prune.model.statistics import row_products, second_moments
from solvers import LayerProblem, solve

CPU = torch.device("cpu")


def _layers(model):
    return dict(model.named_modules())


def _state(model):
    """Everything prune may touch, for exact before / after comparisons."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": [(n, id(p)) for n, p in model.named_parameters()],
        "hooks": sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()),
        "modes": [m.training for m in model.modules()],
    }


def _assert_untouched(model, before):
    after = _state(model)
    assert l0prune.masks_of(model) == {}
    assert after["params"] == before["params"] and after["hooks"] == before["hooks"]
    assert after["modes"] == before["modes"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


def _calibration(data):
    return data.loader("train", batch_size=256)


# --- fixed sparsity ------------------------------------------------------------------------------

def test_fixed_sparsity_writes_exact_masks_and_the_weights_in_place(mlp):
    model, data = mlp
    keys = list(model.state_dict())
    report = l0prune.prune(model, _calibration(data), sparsity=0.7, progress=False)
    layers = _layers(model)
    assert [layer.name for layer in report.layers] == ["1", "3"]
    for layer in report.layers:
        module = layers[layer.name]
        mask = l0prune.mask_of(module)
        expected = round(0.3 * module.weight.numel())
        assert int(mask.sum()) == layer.kept == expected
        assert torch.equal(module.weight[~mask], torch.zeros(module.weight.numel() - expected))
    assert l0prune.mask_of(layers["5"]) is None  # the classifier is left dense
    assert list(model.state_dict()) == keys and not torch_prune.is_pruned(model)
    assert report.sparsity == pytest.approx(0.7, abs=1e-4)
    assert report.calibration_passes == 2 and report.method == "admm"
    assert l0prune.torch_prune(model) == ["1.weight", "3.weight"]  # torch's form, on request
    for name in ("1", "3"):
        torch_prune.remove(layers[name], "weight")
    assert not torch_prune.is_pruned(model)
    assert int((layers["1"].weight != 0).sum()) == report.layers[0].kept


def test_per_layer_results_equal_solvers_on_the_captured_H(mlp):
    model, data = mlp
    calibration = _calibration(data)
    dense = copy.deepcopy(model)
    report = l0prune.prune(model, calibration, sparsity=0.8, sequential=False, progress=False)
    H = second_moments(dense, calibration)
    layers, dense_layers = _layers(model), _layers(dense)
    for layer in report.layers:
        W = dense_layers[layer.name].weight.detach()
        solution = solve(LayerProblem(W, H[layer.name], sparsity=0.8), "admm")
        assert torch.equal(l0prune.mask_of(layers[layer.name]), solution.mask)
        assert torch.equal(layers[layer.name].weight, solution.weight)
        assert layer.relative_error == solution.relative_error


def _rows(model, name, batches):
    """The input rows of layer ``name`` over ``batches`` (float64), by a plain hook."""
    rows = []
    hook = _layers(model)[name].register_forward_pre_hook(lambda m, a: rows.append(a[0]))
    with torch.no_grad():
        for batch in batches:
            model(batch[0])
    hook.remove()
    return torch.cat(rows).double()


def test_sequential_layers_reproduce_the_dense_output_from_pruned_inputs(mlp):
    model, data = mlp
    calibration = _calibration(data)
    dense = copy.deepcopy(model)
    report = l0prune.prune(model, calibration, sparsity=0.8, progress=False)
    layers = _layers(model)
    # Layer 3 sees X (layer 1 pruned) and must reproduce the dense model's X0 @ W^T:
    # min ||X W'^T - X0 W^T||^2 / N + lam ||W' - W||^2 is the layer problem (W~, H, lam) with
    # W~ = (G + lam W)(H + lam I)^-1.
    partial = copy.deepcopy(dense)
    partial[1].weight.data.copy_(masked_weight(layers["1"]))
    X, X0 = _rows(partial, "3", calibration), _rows(dense, "3", calibration)
    # H and G = Y0^T X as the statistics take them (Y0 = X0 W^T the dense layer's outputs less
    # its bias, float32 row products summed in float64, batch by batch; their accuracy is
    # tested in test_statistics): ADMM's support at 80 % moves with perturbations of H at
    # float32 rounding, so the check is on the same moments.
    H = G = 0
    with torch.no_grad():
        for b in calibration:
            xb = _rows(partial, "3", [b]).float()[None]
            y0 = dense[3](_rows(dense, "3", [b]).float()) - dense[3].bias
            H = H + row_products(xb, xb)[0]
            G = G + row_products(y0[None], xb)[0]
    H, G = H / len(X), G / len(X)
    lam = 0.01 * float(H.diagonal().mean())
    W = dense[3].weight.detach().double()
    target = torch.linalg.solve(H + lam * torch.eye(len(H), dtype=H.dtype), G.T + lam * W.T).T
    solution = solve(LayerProblem(target.float(), H, lam=lam, sparsity=0.8), "admm")
    assert torch.equal(l0prune.mask_of(layers["3"]), solution.mask)
    assert (layers["3"].weight - solution.weight).abs().max() < 1e-4  # CG refit tolerance
    # The reported error is the layer's output error against the dense model's.
    P = masked_weight(layers["3"]).detach().double()
    error = ((X @ P.T - X0 @ W.T) ** 2).sum() / ((X0 @ W.T) ** 2).sum()
    # (tr(P H P^T) - 2 <P, G> + ||Y0||^2 cancels to 7e-4 of its terms, each within ~1e-7 of the
    # float64 truth: the float32 products' rounding, ~1e-4 of the error at most)
    assert report.layers[1].relative_error == pytest.approx(float(error), rel=1e-4)


def test_sequential_reconstructs_at_least_as_well_as_parallel(cnn):
    model, data = cnn
    calibration = _calibration(data)
    x = torch.cat([b[0] for b in calibration])
    with torch.no_grad():
        dense_out = model(x)
    errors = {}
    for sequential in (True, False):
        pruned = copy.deepcopy(model)
        report = l0prune.prune(pruned, calibration, sparsity=0.8, sequential=sequential,
                               progress=False)
        with torch.no_grad():
            errors[sequential] = float(((pruned(x) - dense_out) ** 2).mean())
        assert report.calibration_passes == (3 if sequential else 1)
    assert errors[True] <= errors[False] / 10  # each layer corrects the ones before it


def test_grouped_convolutions_are_pruned_group_by_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 3))
    batches = [(torch.randn(16, 4, 6, 6),) for _ in range(2)]
    dense = copy.deepcopy(model)
    l0prune.prune(model, batches, sparsity=0.5, sequential=False, method="admm", progress=False)
    H = second_moments(dense, batches)["2"]
    W = dense[2].weight.detach().reshape(4, 2, 18)  # groups x out/groups x in/groups*9
    mask = l0prune.mask_of(model[2]).reshape(4, 2, 18)
    for g in range(4):
        solution = solve(LayerProblem(W[g], H[g], sparsity=0.5), "admm")
        assert int(mask[g].sum()) == 18
        assert torch.equal(mask[g].bool(), solution.mask)


def test_budget_families(cnn, mlp):
    model, data = cnn
    l0prune.prune(model, _calibration(data), sparsity=0.5, budget=Structured(), progress=False)
    mask = l0prune.mask_of(model[2]).reshape(32, 16, 9)
    per_channel = mask.sum(dim=(0, 2))
    assert set(per_channel.tolist()) == {0.0, 32 * 9.0} and int((per_channel > 0).sum()) == 8

    model, data = mlp
    report = l0prune.prune(model, _calibration(data), budget=NM(2, 4), progress=False)
    groups = l0prune.mask_of(model[1]).reshape(256, 16, 4).sum(dim=-1)
    assert torch.equal(groups, torch.full((256, 16), 2)) and report.sparsity == 0.5
    assert report.budget == "2:4"


def test_sparsity_per_layer(mlp):
    model, data = mlp
    report = l0prune.prune(model, _calibration(data), sparsity={"3": 0.9}, progress=False)
    assert [(layer.name, layer.kept) for layer in report.layers] == [("3", 3277)]
    assert l0prune.mask_of(model[1]) is None
    report = l0prune.prune(copy.deepcopy(mlp[0]), _calibration(data),
                           sparsity={"1": 0.5, "5": 0.2}, method="wanda", progress=False)
    assert [layer.kept for layer in report.layers] == [8192, 1024]


def test_finetuning_keeps_masks_fixed_and_pruned_weights_zero(mlp):
    model, data = mlp
    calibration = _calibration(data)
    plain = copy.deepcopy(model)
    l0prune.prune(plain, calibration, sparsity=0.8, progress=False)
    config = Finetune(data=data.loader("train", batch_size=64, shuffle=True), epochs=2,
                      lr=1e-3, keep_best=False)
    report = l0prune.prune(model, calibration, sparsity=0.8, finetune=config,
                           validation=data.loader("val"), progress=False)
    assert report.finetune_steps == 2 * 17
    before = mean_loss(plain, data.loader("val"), cross_entropy, CPU)  # same masks, no tuning
    assert report.loss_before_finetune == pytest.approx(before, rel=1e-9)
    assert report.loss_before_finetune != pytest.approx(report.pruned_loss, rel=1e-6)
    for name in ("1", "3"):
        tuned, base = _layers(model)[name], _layers(plain)[name]
        mask = l0prune.mask_of(tuned)
        assert torch.equal(mask, l0prune.mask_of(base))
        assert torch.equal(tuned.weight[~mask], torch.zeros(int((~mask).sum())))
        assert not torch.equal(tuned.weight, base.weight)
    assert report.pruned_loss == pytest.approx(
        mean_loss(model, data.loader("val"), cross_entropy, CPU), rel=1e-9
    )


# --- the loss tolerance --------------------------------------------------------------------------

def test_alpha_is_met_on_the_validation_data(mlp):
    model, data = mlp
    validation = data.loader("val")
    dense_loss = mean_loss(model, validation, cross_entropy, CPU)
    report = l0prune.prune(model, _calibration(data), alpha=1.05, validation=validation,
                           progress=False)
    reached = mean_loss(model, validation, cross_entropy, CPU)
    assert report.dense_loss == pytest.approx(dense_loss, rel=1e-12)
    assert reached == pytest.approx(report.pruned_loss, rel=1e-9)
    assert reached <= 1.05 * dense_loss and report.alpha_reached <= 1.05
    best = max((t for t in report.trials if t.met), key=lambda t: t.sparsity)
    assert report.sparsity == pytest.approx(best.sparsity)
    stages = {t.stage for t in report.trials}
    assert {"uniform", "allocated"} <= stages
    assert stages <= {"uniform", "uniform scan", "allocated", "allocated scan", "layer"}
    assert report.sparsity > 0.6
    assert report.validation_passes >= len(report.trials) + 1


def test_alpha_with_finetuning_goes_at_least_as_far(mlp):
    model, data = mlp
    validation = data.loader("val")
    dense_loss = mean_loss(model, validation, cross_entropy, CPU)
    plain = l0prune.prune(copy.deepcopy(model), _calibration(data), alpha=1.02,
                          validation=validation, method="wanda", progress=False)
    config = Finetune(data=data.loader("train", batch_size=64, shuffle=True), steps=30)
    report = l0prune.prune(model, _calibration(data), alpha=1.02, validation=validation,
                           method="wanda", finetune=config, progress=False)
    assert mean_loss(model, validation, cross_entropy, CPU) <= 1.02 * dense_loss
    assert report.finetune_steps == 30 * len(report.trials)
    assert report.sparsity >= plain.sparsity
    for layer in report.layers:
        assert int(l0prune.mask_of(_layers(model)[layer.name]).sum()) == layer.kept


# --- failures leave the model as it was ----------------------------------------------------------

class Interrupt:
    """A loss that raises KeyboardInterrupt at its ``n``-th call."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, outputs, batch):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return cross_entropy(outputs, batch)


def _batchnorm_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 10)).train()


@pytest.mark.parametrize("when", ["bad batch", "solver error", "finetuning", "search"])
def test_a_failed_run_leaves_the_model_exactly_as_it_was(mlp, when):
    _, data = mlp
    model = _batchnorm_model()
    model[4].weight.requires_grad_(False)
    before = _state(model)
    calibration = list(_calibration(data))
    kwargs = {"sparsity": 0.5}
    config = Finetune(data=data.loader("train"), epochs=1)
    if when == "bad batch":
        calibration.append("not a batch")
        error = ValueError
    elif when == "solver error":
        kwargs["options"] = {"no_such_option": 1}
        error = ValueError
    elif when == "finetuning":
        kwargs.update(finetune=config, loss_fn=Interrupt(5))
        error = KeyboardInterrupt
    else:
        kwargs = {"alpha": 1.1, "validation": data.loader("val"), "finetune": config,
                  "loss_fn": Interrupt(60)}
        error = KeyboardInterrupt
    with pytest.raises(error):
        l0prune.prune(model, calibration, progress=False, **kwargs)
    _assert_untouched(model, before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 0.5, "alpha": 1.1}, "exactly one of sparsity= or alpha="),
        ({}, "give sparsity="),
        ({"alpha": 0.9, "validation": "val"}, "alpha must be a number >= 1"),
        ({"alpha": float("nan"), "validation": "val"}, "alpha must be a number >= 1"),
        ({"alpha": 1.05}, "alpha needs validation="),
        ({"sparsity": 1.0}, r"sparsity must be a fraction in \[0, 1\)"),
        ({"sparsity": "0.5"}, "sparsity must be a fraction"),
        ({"sparsity": {"1": 1.5}}, r"sparsity\['1'\] must be a fraction"),
        ({"sparsity": {"9": 0.5}}, "sparsity names"),
        ({"sparsity": {}}, "empty dict"),
        ({"sparsity": 0.5, "targets": "nope"}, "targets pattern 'nope' matches no module"),
        ({"sparsity": 0.5, "targets": "0"}, "matches no prunable layer"),
        ({"sparsity": 0.6, "budget": NM(2, 4)}, "already fixes the sparsity"),
        ({"sparsity": 0.5, "budget": "2:4:8"}, "budget must be unstructured, per-row"),
        ({"sparsity": 0.5, "method": "best"}, "method must be one of"),
        ({"sparsity": 0.5, "finetune": {"epochs": 1, "rate": 0.1}}, "unknown field"),
        ({"sparsity": 0.5, "finetune": 3}, "finetune must be a Finetune"),
        ({"sparsity": 0.5, "device": "no-such-device"}, "device must be"),
        ({"sparsity": 0.5, "validation": []}, "validation is empty"),
        ({"sparsity": 0.5, "loss_fn": "ce"}, "loss_fn must be callable"),
        ({"sparsity": 0.5, "sequential": 1}, "sequential must be True or False"),
        ({"sparsity": 0.5, "seed": 1.5}, "seed must be an integer"),
        ({"sparsity": 0.5, "options": [1]}, "options must be a dict"),
    ],
)
def test_bad_arguments_are_clear_errors(mlp, kwargs, message):
    model, data = mlp
    if kwargs.get("validation") == "val":
        kwargs["validation"] = data.loader("val")
    before = _state(model)
    with pytest.raises(ValueError, match=message):
        l0prune.prune(model, _calibration(data), progress=False, **kwargs)
    _assert_untouched(model, before)


@pytest.mark.parametrize(
    "calibration, message",
    [([], "calibration is empty"), ((x for x in [1]), "re-iterable"), (None, "re-iterable")],
)
def test_bad_calibration(calibration, message):
    with pytest.raises(ValueError, match=message):
        l0prune.prune(nn.Linear(2, 2), calibration, sparsity=0.5, progress=False)


def test_a_budget_that_does_not_fit_a_layer(cnn):
    model, data = cnn
    with pytest.raises(ValueError, match="does not fit layer '0'"):
        l0prune.prune(model, _calibration(data), budget=NM(2, 4), progress=False)


def test_model_must_be_a_module():
    with pytest.raises(ValueError, match="model must be a torch nn.Module"):
        l0prune.prune("model", [torch.zeros(1)], sparsity=0.5)


# --- round trips, progress -----------------------------------------------------------------------

def test_the_pruned_model_round_trips(cnn, tmp_path):
    model, data = cnn
    l0prune.prune(model, _calibration(data), sparsity=0.6, progress=False)
    right_after = copy.deepcopy(model)  # before any forward
    x = next(iter(data.loader("test")))[0]
    with torch.no_grad():
        expected = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [
        right_after,
        copy.deepcopy(model),
        pickle.loads(pickle.dumps(model)),
        torch.load(buffer, weights_only=False),
    ]
    torch.save(model.state_dict(), tmp_path / "state.pt")
    same = copy.deepcopy(model)
    with torch.no_grad():
        for p in same.parameters():
            p.add_(1.0)
    same.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    copies.append(same)
    for other in copies:
        with torch.no_grad():
            assert torch.equal(other(x), expected)
        assert torch.equal(l0prune.mask_of(other[2]), l0prune.mask_of(model[2]))
    report = l0prune.export(model, tmp_path / "cnn.pt")
    fresh = digits_cnn()
    fresh.load_state_dict(l0prune.load_sparse(report.sparse_path))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), expected)
    assert report.sparse_bytes < 0.7 * report.dense_bytes


def test_progress_bars_are_silent_when_asked(mlp, capsys):
    model, data = mlp
    l0prune.prune(copy.deepcopy(model), _calibration(data), sparsity=0.5, method="wanda",
                  progress=False)
    assert capsys.readouterr().err == ""
    l0prune.prune(model, _calibration(data), sparsity=0.5, method="wanda", progress=True)
    assert "layers" in capsys.readouterr().err


# --- Hugging Face models -------------------------------------------------------------------------

def test_bert_with_padding_and_shared_inputs(bert, tokens):
    dense = copy.deepcopy(bert)
    report = l0prune.prune(bert, tokens, sparsity=0.5, progress=False, blockwise=False)
    names = [layer.name for layer in report.layers]
    assert len(names) == 12 and "pooler.dense" not in names  # the last layer to run is kept
    assert report.calibration_passes == 8 < len(names)  # query, key, value share a pass
    layers = _layers(bert)
    for name in names:
        mask = l0prune.mask_of(layers[name])
        assert int(mask.sum()) == mask.numel() // 2
    out = bert(**tokens[0]).last_hidden_state
    # The masks act in the forward pass: the output is the dense model's with the pruned
    # weights in place, and not the dense output.
    pruned = copy.deepcopy(dense)
    pruned.load_state_dict(permanent_state_dict(bert))
    assert torch.allclose(out, pruned(**tokens[0]).last_hidden_state, atol=1e-6)
    assert not torch.allclose(out, dense(**tokens[0]).last_hidden_state, atol=1e-3)
    # The first group's problem is the dense H with padding left out.
    H = second_moments(dense, tokens, targets=r".*layer\.0\.attention\.self\.query")
    name = "encoder.layer.0.attention.self.query"
    solution = solve(LayerProblem(_layers(dense)[name].weight.detach(), H[name], sparsity=0.5),
                     "admm")
    assert torch.equal(l0prune.mask_of(layers[name]), solution.mask)
    parallel = l0prune.prune(dense, tokens, sparsity=0.5, sequential=False, progress=False,
                             blockwise=False)
    assert parallel.calibration_passes == 1


def test_gpt2_conv1d_layers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=1,
                                     n_head=2)
    model = transformers.GPT2Model(config).eval()
    batches = [{"input_ids": torch.randint(0, 97, (4, 10))} for _ in range(2)]
    dense = copy.deepcopy(model)
    report = l0prune.prune(model, batches, sparsity=0.75, sequential=False, progress=False)
    assert [layer.name for layer in report.layers] == ["h.0.attn.c_attn", "h.0.attn.c_proj",
                                                       "h.0.mlp.c_fc"]
    H = second_moments(dense, batches, targets=r"h\.0\.attn\.c_attn")["h.0.attn.c_attn"]
    W = _layers(dense)["h.0.attn.c_attn"].weight.detach().T  # Conv1D stores in x out
    solution = solve(LayerProblem(W, H, sparsity=0.75), "admm")
    layer = _layers(model)["h.0.attn.c_attn"]
    assert torch.equal(l0prune.mask_of(layer), solution.mask.T)
    assert torch.equal(layer.weight, solution.weight.T)
