"""Statistics: H streamed through hooks equals X^T X / N of the layers' real inputs."""

import contextlib
import copy

import pytest
import torch
from torch import nn

from l0prune.model.statistics import (
    GRAM_BLOCK,
    PRODUCT_ROWS,
    BlockDiagonal,
    add_gram,
    capture_dense,
    collect,
    column_blocks,
    discover,
    input_groups,
    mirrored,
    second_moments,
)
from l0prune.model.targets import Target, select_targets

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


def _assert_energy(found, outputs):
    """``found`` is ``||outputs||^2 / n`` (float32 squares summed in float64)."""
    exact = float((outputs.detach().double() ** 2).sum()) / outputs.shape[0]
    assert found.dtype == torch.float64 and found.shape == (1,)
    assert float(found[0]) == pytest.approx(exact, rel=1e-6)


def test_paired_statistics_pair_each_row_with_its_dense_twin():
    """A group with fewer outputs than inputs pairs ``X`` with the dense outputs
    (``G = Y_0^T X / N``), another with the dense inputs (``C = X^T X_0 / N``); both give the
    dense output's energy and the same ``G`` for the dense weight."""
    from contextlib import contextmanager

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 5),
                          nn.ReLU(), nn.Linear(5, 2))
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
    groups = input_groups(targets, discovery)[1:3]  # layers 2 (6 -> 3) and 4 (3 -> 5)
    moments = collect(model, batches, groups, CPU, discovery, reference)
    X = _inputs(model, batches, ["2", "4"])
    X0 = _inputs(dense, batches, ["2", "4"])
    Y0 = {n: (X0[n] @ dense[int(n)].weight.detach().double().T) for n in ("2", "4")}
    narrow, wide = moments["2"], moments["4"]
    assert narrow.cross is None and wide.outputs is None
    _assert_products(narrow.H[0], X["2"])
    _assert_products(narrow.outputs[0], Y0["2"], X["2"])
    _assert_products(wide.H[0], X["4"])
    _assert_products(wide.cross[0], X["4"], X0["4"])
    for name, m in moments.items():
        _assert_energy(m.energy, Y0[name])
        W = dense[int(name)].weight.detach()[None]
        G = Y0[name].T @ X[name] / X[name].shape[0]
        assert torch.allclose(m.dense_cross(W)[0], G, rtol=1e-5, atol=1e-6), name
    assert torch.equal(model[0].weight, pruned_weight)


def test_captured_dense_sides_are_each_groups_real_rows(bert, tokens):
    """One pass keeps every group's dense side (padding dropped): bit for bit the inputs of a
    group that keeps them, the outputs less the bias of one that keeps those; pairing with them
    gives the statistics of a reference pass per batch bit for bit."""
    discovery = discover(bert, tokens[0], CPU)
    groups = input_groups(select_targets(bert, discovery.order, r"encoder\.layer\.0\..*"),
                          discovery)
    sides = capture_dense(bert, tokens, groups, CPU, discovery)
    names = [g[0].name for g in groups]
    truth = _inputs(bert, tokens, names, "attention_mask")
    assert [side.keeps_outputs for side in sides] == [False, False, False, True]
    for group, side in zip(groups, sides, strict=True):
        name = group[0].name
        if side.keeps_outputs:
            assert side.inputs == []
            for t, found in zip(group, side.outputs, strict=True):
                assert len(found) == len(tokens)
                exact = truth[name] @ t.module.weight.detach().double().T
                assert torch.allclose(torch.cat(found).double(), exact, atol=1e-5), name
        else:
            assert len(side.inputs) == len(tokens)
            assert torch.equal(torch.cat(side.inputs).double(), truth[name]), name
        for t, energy in zip(group, side.energy, strict=True):
            exact = truth[name] @ t.module.weight.detach().double().T
            assert float(energy[0]) == pytest.approx(float((exact ** 2).sum()), rel=1e-6), t.name
    paired = collect(bert, tokens, groups[2:], CPU, discovery, dense=sides[2:])
    direct = collect(bert, tokens, groups[2:], CPU, discovery, contextlib.nullcontext)
    for name in (t.name for g in groups[2:] for t in g):
        for a, b in zip(vars(paired[name]).values(), vars(direct[name]).values(), strict=True):
            assert (a is None and b is None) or torch.equal(a, b), name


def test_gram_blocks_above_the_diagonal_give_the_whole_product():
    """``X^T X`` from the block rows on and above the diagonal, mirrored: within the float32
    products' bound of the float64 truth, exactly symmetric, over several row chunks."""
    g = torch.Generator().manual_seed(0)
    cols = 2 * GRAM_BLOCK + 37
    X = torch.randn(1, PRODUCT_ROWS + 300, cols, generator=g) * torch.linspace(0.1, 3, cols)
    total = torch.zeros(1, cols, cols, dtype=torch.float64)
    add_gram(total, X[:, :500])
    add_gram(total, X[:, 500:])
    H = mirrored(total)[0]
    assert torch.equal(H, H.T)
    _assert_products(H / X.shape[1], X[0].double())


def test_a_statistics_pass_stops_at_the_groups_first_member(bert, tokens):
    """The members of a group read one input: the pass ends at the first's, so a BERT block's
    key and value projections never run for the query group's statistics."""
    discovery = discover(bert, tokens[0], CPU)
    qkv = input_groups(select_targets(bert, discovery.order, r"encoder\.layer\.0\..*"),
                       discovery)[0]
    assert [t.name.split(".")[-1] for t in qkv] == ["query", "key", "value"]
    runs = {t.name: 0 for t in qkv}
    handles = [t.module.register_forward_hook(
        lambda m, a, o, name=t.name: runs.__setitem__(name, runs[name] + 1)) for t in qkv]
    try:
        collect(bert, tokens, [qkv], CPU, discovery)
        assert list(runs.values()) == [0, 0, 0]
        collect(bert, tokens, [qkv], CPU, discovery, contextlib.nullcontext)
    finally:
        for h in handles:
            h.remove()
    assert list(runs.values()) == [len(tokens)] * 3  # the dense side needs every output


# --- block-diagonal statistics ---------------------------------------------------------------

def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0)), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, groups=2, padding=1, padding_mode="reflect"),
                         nn.Flatten(), nn.Linear(4 * 3 * 4, 10), nn.ReLU(), nn.Linear(10, 2))


@pytest.mark.parametrize(("name", "bounds"), [
    ("2", (0, 12, 24, 36)),  # 6 channels x 6 taps: two channels a block
    ("2", (0, 24, 36)),  # uneven: four channels, then two
    ("4", (0, 9, 18)),  # grouped: each group's two channels split in two
    ("6", (0, 16, 32, 48)),  # a linear layer's inputs
])
def test_block_diagonal_statistics_are_the_diagonal_blocks_of_H(name, bounds):
    """Each block is ``X_b^T X_b / N`` of the block's own columns, from the patches of its own
    channels (padding, strides and groups as the layer has them): the full ``H``'s diagonal
    block, nothing off it."""
    model = _conv_net()
    batches = [(torch.randn(5, 3, 6, 5),), (torch.randn(2, 3, 6, 5),)]
    discovery = discover(model, batches[0], CPU)
    groups = input_groups(select_targets(model, discovery.order, name), discovery)
    full = collect(model, batches, groups, CPU, discovery)[name].H
    H = collect(model, batches, groups, CPU, discovery, blocks={name: bounds})[name].H
    assert isinstance(H, BlockDiagonal) and H.bounds == bounds
    rows = _inputs(model, batches, [name])[name]
    g = full.shape[0]
    for (a, b), block in zip(H.spans, H.blocks, strict=True):
        assert block.shape == (g, b - a, b - a)
        for i in range(g):
            cols = rows[:, i * full.shape[1]:(i + 1) * full.shape[1]]
            _assert_products(block[i], cols[:, a:b])
            assert torch.allclose(block[i], full[i, a:b, a:b], rtol=1e-6, atol=1e-9)
    assert torch.allclose(H.dense(), torch.where(H.dense() != 0, full, 0.0), atol=1e-9)


def test_paired_block_statistics_pair_each_block_with_its_own_dense_output():
    """Paired, a block pairs its rows with the dense rows of its own columns
    (``C_b = X_b^T X_0b / N``), and each member's energy is that of its block's own part of the
    dense output, ``||X_0b W_b^T||^2 / N``; a dense pass captured once gives the same bits as a
    reference pass per batch."""
    from contextlib import contextmanager

    model = _conv_net()
    dense = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight[:, :1] = 0
    pruned = model[0].weight.detach().clone()
    batches = [(torch.randn(5, 3, 6, 5),), (torch.randn(3, 3, 6, 5),)]

    @contextmanager
    def reference():
        model[0].weight.data.copy_(dense[0].weight.data)
        yield
        model[0].weight.data.copy_(pruned)

    discovery = discover(model, batches[0], CPU)
    groups = input_groups(select_targets(model, discovery.order, "2"), discovery)
    bounds = {"2": (0, 12, 24, 36)}
    found = collect(model, batches, groups, CPU, discovery, reference, blocks=bounds)["2"]
    X, X0 = _inputs(model, batches, ["2"])["2"], _inputs(dense, batches, ["2"])["2"]
    W = dense[2].weight.detach().reshape(1, 4, -1)
    for j, (a, b) in enumerate(found.cross.spans):
        _assert_products(found.cross.blocks[j][0], X[:, a:b], X0[:, a:b])
        part = X0[:, a:b] @ W[0, :, a:b].double().T
        assert float(found.energy[0, j]) == pytest.approx(
            float((part ** 2).sum()) / X.shape[0], rel=1e-6)
    G = torch.cat([part @ c.transpose(1, 2) for part, c in
                   zip(W.double().split(12, dim=2), found.cross.blocks, strict=True)], dim=2)
    assert torch.equal(found.dense_cross(W), G)
    with reference():
        sides = capture_dense(model, batches, groups, CPU, discovery, blocks=bounds)
    again = collect(model, batches, groups, CPU, discovery, dense=sides, blocks=bounds)["2"]
    for a, b in zip([*again.H.blocks, *again.cross.blocks, again.energy],
                    [*found.H.blocks, *found.cross.blocks, found.energy], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("cols", "width", "unit", "bounds"), [
    (10, 4, 1, (0, 4, 7, 10)),
    (10, 100, 1, (0, 10)),
    (6 * 64, 128, 64, (0, 128, 256, 384)),
    (6 * 64, 100, 64, tuple(range(0, 385, 64))),  # narrower than a channel: one a block
    (12, 5, 4, (0, 4, 8, 12)),  # N:M groups of 4 never split
])
def test_column_blocks_are_even_whole_units_within_the_width(cols, width, unit, bounds):
    assert column_blocks(cols, width, unit) == bounds
