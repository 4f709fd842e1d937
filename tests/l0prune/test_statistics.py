"""Statistics: H streamed through hooks equals X^T X / N of the layers' real inputs."""

import contextlib
import copy

import pytest
import torch
from torch import nn

from l0prune.statistics import (
    PRODUCT_ROWS,
    capture_rows,
    collect,
    discover,
    input_groups,
    second_moments,
)
from l0prune.targets import Target, select_targets

CPU = torch.device("cpu")


def _assert_products(found, rows, twins=None):
    """``found`` is ``rows^T twins / n`` (``twins`` defaults to ``rows``) as float32 products
    of at most PRODUCT_ROWS rows summed in float64 give it: a float32 sum of k products errs by
    at most ``k 2^-24 sum_i |x_i y_i|``, by Cauchy-Schwarz at most
    ``PRODUCT_ROWS 2^-24 sqrt(D_ii E_jj)`` after dividing by ``n`` (``D``, ``E`` the two sides'
    second moments). A wrong row, a lost row or a wrong pairing breaks it by far more."""
    twins = rows if twins is None else twins
    n = rows.shape[0]
    exact = rows.T @ twins / n
    scale = torch.outer((rows * rows).sum(0), (twins * twins).sum(0)).sqrt() / n
    bound = PRODUCT_ROWS * 2.0**-24 * scale
    assert found.dtype == torch.float64
    assert ((found - exact).abs() <= bound).all()
    assert (found - exact).abs().max() <= 1e-5 * exact.abs().max()  # typically ~1e-7


def _inputs(model, batches, names, mask_key=None):
    """Each named layer's input rows over ``batches``, by a plain hook (the reference)."""
    modules = dict(model.named_modules())
    rows = {n: [] for n in names}
    handles = []
    current = {}
    for n in names:
        target = Target(n, modules[n])

        def hook(module, args, target=target):
            rows[target.name].append(target.rows(args[0], current.get("mask")))

        handles.append(modules[n].register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in batches:
            if isinstance(batch, dict):
                current["mask"] = batch.get(mask_key) if mask_key else None
                model(**batch)
            else:
                model(batch[0])
    for h in handles:
        h.remove()
    return {n: torch.cat(r).double() for n, r in rows.items()}


def test_second_moments_of_the_mlp(mlp):
    model, data = mlp
    batches = list(data.loader("train", batch_size=100))
    H = second_moments(model, batches)
    assert list(H) == ["1", "3"]
    X = _inputs(model, batches, ["1", "3"])
    for name, x in X.items():
        _assert_products(H[name], x)


def test_second_moments_of_the_cnn_use_patches(cnn):
    model, data = cnn
    batches = list(data.loader("train", batch_size=200))[:2]
    H = second_moments(model, batches, targets=".*")
    assert {n: tuple(h.shape) for n, h in H.items()} == {
        "0": (9, 9), "2": (144, 144), "6": (512, 512), "8": (64, 64)
    }
    X = _inputs(model, batches, ["0", "2"])
    assert X["2"].shape[0] == 400 * 64  # one row per output position
    for name, x in X.items():
        _assert_products(H[name], x)


def test_grouped_convolution_gets_one_H_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 6, 3, groups=2), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 2))
    batches = [(torch.randn(3, 4, 8, 8),)]
    H = second_moments(model, batches)
    assert H["1"].shape == (2, 18, 18)
    x = _inputs(model, batches, ["1"])["1"]
    for g in range(2):
        _assert_products(H["1"][g], x[:, g * 18:(g + 1) * 18])


def test_bert_shares_query_key_value_and_drops_padding(bert, tokens):
    discovery = discover(bert, tokens[0], CPU)
    targets = select_targets(bert, discovery.order, ".*")
    groups = [[t.name.split(".")[-1] for t in g] for g in input_groups(targets, discovery)]
    assert groups[0] == ["query", "key", "value"]
    assert len(groups) == 9 and len(targets) == 13  # 4 groups per layer, and the pooler
    H = second_moments(bert, tokens, targets=".*")
    name = "encoder.layer.0.attention.self.query"
    assert H[name].data_ptr() == H["encoder.layer.0.attention.self.key"].data_ptr()  # shared
    x = _inputs(bert, tokens, [name, "encoder.layer.1.output.dense"], "attention_mask")
    real = int(sum(b["attention_mask"].sum() for b in tokens))
    assert x[name].shape[0] == real < sum(b["attention_mask"].numel() for b in tokens)
    for n, rows in x.items():
        _assert_products(H[n], rows)


def test_a_pass_stops_after_its_last_layer(mlp):
    model, data = mlp
    batches = list(data.loader("train"))
    discovery = discover(model, batches[0], CPU)
    targets = select_targets(model, discovery.order, ".*")
    ran = []
    hook = model[5].register_forward_pre_hook(lambda m, a: ran.append(1))
    first = collect(model, batches, input_groups(targets, discovery)[:1], CPU, discovery)
    assert not ran  # the forward stopped before the later layers
    hook.remove()
    full = second_moments(model, batches)
    assert torch.equal(first["1"].H[0], full["1"])


def test_layers_called_twice_count_every_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            return self.head(self.fc(self.fc(x)))

    torch.manual_seed(0)
    model = Twice()
    x = torch.randn(5, 3)
    discovery = discover(model, x, CPU)
    assert discovery.calls == {"fc": 2, "head": 1}
    H = second_moments(model, [x])["fc"]
    with torch.no_grad():
        rows = torch.cat([x, model.fc(x)]).double()
    _assert_products(H, rows)


def test_all_padding_is_an_error(bert, tokens):
    empty = [{**tokens[0], "attention_mask": torch.zeros_like(tokens[0]["attention_mask"])}]
    with pytest.raises(ValueError, match="no calibration input reached"):
        second_moments(bert, empty, targets=r".*query")


def test_paired_statistics_pair_each_row_with_its_dense_twin():
    from contextlib import contextmanager

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    dense = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight[:, :2] = 0  # the "pruned" first layer
    pruned_weight = model[0].weight.detach().clone()
    batches = [(torch.randn(5, 4),), (torch.randn(7, 4),)]

    @contextmanager
    def reference():
        model[0].weight.data.copy_(dense[0].weight.data)
        yield
        model[0].weight.data.copy_(pruned_weight)

    discovery = discover(model, batches[0], CPU)
    targets = select_targets(model, discovery.order)
    groups = input_groups(targets, discovery)[1:]  # layer 2 only
    moments = collect(model, batches, groups, CPU, discovery, reference)["2"]
    X = torch.cat([_inputs(model, [b], ["2"])["2"] for b in batches])
    X0 = torch.cat([_inputs(dense, [b], ["2"])["2"] for b in batches])
    _assert_products(moments.H[0], X)
    _assert_products(moments.cross[0], X, X0)
    _assert_products(moments.dense[0], X0)
    assert torch.equal(model[0].weight, pruned_weight)


def test_captured_rows_are_each_groups_real_input_rows(bert, tokens):
    """One pass keeps every group's rows (padding dropped), bit for bit the layers' inputs,
    and pairing with them gives the statistics of a reference pass per batch."""
    discovery = discover(bert, tokens[0], CPU)
    groups = input_groups(select_targets(bert, discovery.order, r"encoder\.layer\.0\..*"),
                          discovery)
    rows = capture_rows(bert, tokens, groups, CPU, discovery)
    names = [g[0].name for g in groups]
    truth = _inputs(bert, tokens, names, "attention_mask")
    for name, found in zip(names, rows, strict=True):
        assert len(found) == len(tokens)
        assert torch.equal(torch.cat(found).double(), truth[name]), name
    paired = collect(bert, tokens, groups[2:], CPU, discovery, dense_rows=rows[2:])
    direct = collect(bert, tokens, groups[2:], CPU, discovery, contextlib.nullcontext)
    for name in (t.name for g in groups[2:] for t in g):
        for a, b in zip(vars(paired[name]).values(), vars(direct[name]).values(), strict=True):
            assert torch.equal(a, b), name
