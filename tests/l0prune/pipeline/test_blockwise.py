"""Block-by-block pruning on tiny random-init transformers: the same results as the whole-model
path, one calibration pass, rollback per block, resume bit for bit."""

import copy
import json
import os

import pytest
import torch
from torch import nn

import l0prune
from l0prune.model import blocks
from l0prune.model.masks import mask_of, masks_of
from l0prune.model.rollback import Rollback
from l0prune.pipeline.layerwise import LayerPruner

transformers = pytest.importorskip("transformers")

VOCAB = 97


def _config(arch: str, layers: int = 3):
    if arch == "gpt2":
        return transformers.GPT2LMHeadModel, transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=2, n_positions=32)
    if arch == "opt":
        return transformers.OPTForCausalLM, transformers.OPTConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
            ffn_dim=64, max_position_embeddings=32, word_embed_proj_dim=32)
    if arch == "llama":
        return transformers.LlamaForCausalLM, transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel, transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32)


def tiny(arch: str, layers: int = 3) -> nn.Module:
    """A random-init model of ``arch`` with hidden size 32 (nothing downloaded)."""
    cls, config = _config(arch, layers)
    torch.manual_seed(0)
    return cls(config).eval()


def token_batches(seed: int = 0, count: int = 3, length: int = 12):
    """``input_ids`` / ``attention_mask`` batches whose sequences end in padding."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(1, VOCAB, (4, length), generator=g)
        lengths = torch.randint(length // 2, length + 1, (4,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask})
    return batches


def _state(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": [(n, id(p), p.device) for n, p in model.named_parameters()],
        "hooks": sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()),
        "modes": [m.training for m in model.modules()],
    }


def _assert_untouched(model, before):
    after = _state(model)
    assert masks_of(model) == {}
    assert after["params"] == before["params"] and after["hooks"] == before["hooks"]
    assert after["modes"] == before["modes"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


def _pruned(model, report):
    modules = dict(model.named_modules())
    return {layer.name: (modules[layer.name].weight.detach().clone(),
                         mask_of(modules[layer.name]))
            for layer in report.layers}


def _fail_in_block(monkeypatch, block: int, error: BaseException, counter: list | None = None):
    """Make ``LayerPruner.solve_all`` raise ``error`` on a batch holding a layer of ``block``."""
    solve_all = LayerPruner.solve_all

    def failing(self, jobs, on_done=None):
        for target, _, _ in jobs:
            if f".{block}." in target.name:
                raise error
            if counter is not None:
                counter.append(target.name)
        return solve_all(self, jobs, on_done)

    monkeypatch.setattr(LayerPruner, "solve_all", failing)


# --- finding the stack ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch, name", [
    ("gpt2", "transformer.h"), ("opt", "model.decoder.layers"), ("llama", "model.layers"),
    ("bert", "encoder.layer"),
])
def test_the_stack_is_found_and_checked(arch, name):
    model = tiny(arch)
    stack = blocks.find_stack(model)
    assert stack.name == name and len(stack.blocks) == 3
    discovery, problem = blocks.discover(model, stack, token_batches()[0], torch.device("cpu"))
    assert problem is None and len(discovery.order) > 12


def test_a_module_list_that_is_not_a_chain_keeps_the_whole_model_path():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(6, 8)
            self.heads = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            h = self.body(x).relu()
            return self.out(self.heads[0](h) + self.heads[1](h))

    torch.manual_seed(0)
    model = TwoHeads().eval()
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    report = l0prune.prune(model, data, sparsity=0.5, method="obs", progress=False)
    assert report.blocks is None and report.layers[0].name == "body"
    with pytest.raises(ValueError, match="block 1 does not read block 0's output"):
        l0prune.prune(TwoHeads(), data, sparsity=0.5, blockwise=True, progress=False)
    with pytest.raises(ValueError, match="blockwise=True needs a model built as a stack"):
        l0prune.prune(nn.Sequential(nn.Linear(6, 3)), data, sparsity=0.5, blockwise=True,
                      progress=False)


def test_a_target_before_the_stack_keeps_the_whole_model_path():
    class Projected(nn.Module):
        def __init__(self):
            super().__init__()
            self.project_in = nn.Linear(6, 8)
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in "ab")
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            x = self.project_in(x)
            for layer in self.layers:
                x = layer(x)
            return self.out(x)

    torch.manual_seed(0)
    model, data = Projected().eval(), [(torch.randn(32, 6), torch.randint(0, 3, (32,)))]
    before = _state(model)
    with pytest.raises(ValueError, match="target 'project_in' runs before the last block"):
        l0prune.prune(model, data, sparsity=0.5, blockwise=True, progress=False)
    _assert_untouched(model, before)
    assert l0prune.prune(model, data, sparsity=0.5, method="obs", progress=False).blocks is None
    block = l0prune.prune(copy.deepcopy(Projected().eval()), data, sparsity=0.5, method="obs",
                          ignore="project_in", progress=False)
    assert block.blocks == "layers, 2 blocks"


# --- the same results as the whole-model path ----------------------------------------------------

@pytest.mark.parametrize("sequential", [False, True], ids=["parallel", "sequential"])
@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama", "bert"])
def test_block_mode_equals_the_whole_model_path(arch, sequential):
    data = token_batches()
    whole_model, block_model = tiny(arch), tiny(arch)
    whole = l0prune.prune(whole_model, data, sparsity=0.6, method="obs", sequential=sequential,
                          blockwise=False, progress=False)
    block = l0prune.prune(block_model, data, sparsity=0.6, method="obs", sequential=sequential,
                          progress=False)
    assert block.blocks is not None and whole.blocks is None
    assert [layer.name for layer in block.layers] == [layer.name for layer in whole.layers]
    assert block.calibration_passes == 1
    assert whole.calibration_passes == (3 * 4 if sequential else 1)  # 4 input groups a block
    expected, found = _pruned(whole_model, whole), _pruned(block_model, block)
    for name, (weight, mask) in expected.items():
        assert torch.equal(found[name][1], mask), name
        if sequential:
            torch.testing.assert_close(found[name][0], weight, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(found[name][0], weight), name
    for a, b in zip(whole.layers, block.layers, strict=True):
        assert a.kept == b.kept and b.relative_error == pytest.approx(a.relative_error, rel=1e-6)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_one_dense_pass_per_block_gives_the_per_group_passes_results_bit_for_bit(
        monkeypatch, arch):
    """The dense rows of all of a block's groups from one dense pass (the default) are those
    of a dense pass per group (budget 0): the same weights and masks, bit for bit, in fewer
    block passes (per block and batch: 1 dense + 4 pruned group passes + 1 pruned advance,
    against one dense pass per paired group, 4 pruned, and 2 to advance; none to advance past
    the last block)."""
    from l0prune.pipeline import blockwise

    data = token_batches()
    calls = []
    real = blockwise.run_block
    monkeypatch.setattr(blockwise, "run_block", lambda *a: calls.append(1) or real(*a))
    found = {}
    for widths in (blockwise.DENSE_ROW_WIDTHS, 0.0):
        monkeypatch.setattr(blockwise, "DENSE_ROW_WIDTHS", widths)
        calls.clear()
        model = tiny(arch)
        report = l0prune.prune(model, data, sparsity=0.6, method="obs", sequential=True,
                               progress=False)
        found[widths] = (_pruned(model, report), len(calls),
                         [layer.relative_error for layer in report.layers])
    (one, one_calls, one_errors), (each, each_calls, each_errors) = found.values()
    for name, (weight, mask) in each.items():
        assert torch.equal(one[name][0], weight) and torch.equal(one[name][1], mask), name
    assert one_errors == each_errors
    blocks_, batches = 3, len(data)
    # the last block is not advanced: its outputs are not needed
    assert one_calls == batches * ((blocks_ - 1) * (1 + 4 + 1) + (1 + 4))
    assert each_calls == batches * ((3 + 1 + 4 + 1) + (blocks_ - 2) * (4 + 1 + 4 + 1) + (4 + 4))


def test_dense_rows_over_the_budget_are_captured_in_runs():
    from l0prune.model.targets import Target
    from l0prune.pipeline.blockwise import dense_runs

    widths = [4, 4, 4, 16, 4]
    groups = [[Target(f"g{i}", nn.Linear(w, w))] for i, w in enumerate(widths)]
    names = [[g[0].name for g in run] for run in dense_runs(groups, 4, budget=3.5)]
    assert names == [["g0", "g1", "g2"], ["g3"], ["g4"]]  # g3 alone is over the budget
    assert [len(run) for run in dense_runs(groups, 4, budget=7)] == [4, 1]
    runs = dense_runs(groups, 4, budget=0)
    assert [len(run) for run in runs] == [1] * 5 and runs[3][0] is groups[3]
    conv = [[Target("c", nn.Conv2d(1, 1, 3))]] + groups[:2]
    assert [len(run) for run in dense_runs(conv, 4)] == [1, 2]
    down = groups[:3] + [[Target("down", nn.Linear(16, 4))]]  # keeps its 4 dense outputs
    assert [len(run) for run in dense_runs(down, 4, budget=3.5)] == [3, 1]
    assert [len(run) for run in dense_runs(down, 4, budget=4)] == [4]


def test_targets_after_the_stack_are_pruned_by_whole_model_passes():
    """BERT's pooler runs after the stack: pruned after it, one pass per input group."""
    data = token_batches()
    pattern = r"pooler\.dense|encoder\.layer\.\d\.output\.dense"
    for sequential, passes in ((True, 2), (False, 2)):
        whole_model, block_model = tiny("bert"), tiny("bert")
        whole = l0prune.prune(whole_model, data, sparsity=0.5, method="obs", targets=pattern,
                              sequential=sequential, blockwise=False, progress=False)
        block = l0prune.prune(block_model, data, sparsity=0.5, method="obs", targets=pattern,
                              sequential=sequential, progress=False)
        assert block.layers[-1].name == "pooler.dense" and block.calibration_passes == passes
        for name, (weight, mask) in _pruned(whole_model, whole).items():
            assert torch.equal(_pruned(block_model, block)[name][1], mask), name
            torch.testing.assert_close(_pruned(block_model, block)[name][0], weight)


def _distance_to(dense: nn.Module, batches):
    """A loss that grows with pruning on a random model: 1 + the relative change of the
    logits from ``dense``'s on the same batch."""
    with torch.no_grad():
        truth = {b["input_ids"].numpy().tobytes(): dense(**b).logits for b in batches}

    def loss(outputs, batch):
        reference = truth[batch["input_ids"].numpy().tobytes()]
        return 1 + (outputs.logits - reference).pow(2).sum() / reference.pow(2).sum()

    return loss


def test_the_search_in_block_mode_matches_the_whole_model_search():
    data, validation = token_batches(0), token_batches(1, count=2)
    whole_model, block_model = tiny("llama", 2), tiny("llama", 2)
    kwargs = dict(alpha=1.1, validation=validation, method="wanda", progress=False,
                  loss_fn=_distance_to(tiny("llama", 2), validation))
    whole = l0prune.prune(whole_model, data, blockwise=False, **kwargs)
    block = l0prune.prune(block_model, data, **kwargs)
    assert [(t.stage, t.target, t.met) for t in block.trials] == [
        (t.stage, t.target, t.met) for t in whole.trials]
    assert any(t.stage == "allocated" and t.met for t in block.trials)
    assert not all(t.met for t in block.trials)
    assert block.sparsity == whole.sparsity
    assert block.pruned_loss == pytest.approx(whole.pruned_loss, rel=1e-6)
    assert block.calibration_passes == 1  # block 0's inputs are captured once for every trial
    for name, (_, mask) in _pruned(whole_model, whole).items():
        assert torch.equal(_pruned(block_model, block)[name][1], mask), name


# --- rollback per block --------------------------------------------------------------------------

@pytest.mark.parametrize("error", [RuntimeError("solver failed"), KeyboardInterrupt()])
def test_a_failure_in_block_k_leaves_the_model_bit_identical(monkeypatch, error):
    model = tiny("llama", 4)
    before = _state(model)
    stack = blocks.find_stack(model)
    captured = []
    capture = Rollback.capture

    def record(self, part):
        captured.append(part)
        capture(self, part)

    monkeypatch.setattr(Rollback, "capture", record)
    _fail_in_block(monkeypatch, 2, error)
    with pytest.raises(type(error)):
        l0prune.prune(model, token_batches(), sparsity=0.5, method="obs", progress=False)
    _assert_untouched(model, before)
    # The copies were taken block by block, up to the failing one: never the whole model.
    assert captured == [stack.blocks[0], stack.blocks[1], stack.blocks[2]]


def test_rollback_copies_on_disk_keep_one_block_in_memory(monkeypatch, tmp_path):
    data = token_batches()
    in_memory = []
    release = Rollback.release

    def record(self, part):
        release(self, part)
        in_memory.append(len(self.values))

    monkeypatch.setattr(Rollback, "release", record)
    expected_model, model = tiny("llama", 4), tiny("llama", 4)
    expected = l0prune.prune(expected_model, data, sparsity=0.5, method="obs", progress=False)
    in_memory.clear()
    found = l0prune.prune(model, data, sparsity=0.5, method="obs", rollback_dir=tmp_path,
                          progress=False)
    assert in_memory == [0, 0, 0, 0] and not any(tmp_path.iterdir())
    for name, (weight, mask) in _pruned(expected_model, expected).items():
        assert torch.equal(_pruned(model, found)[name][0], weight)
        assert torch.equal(_pruned(model, found)[name][1], mask)
    model = tiny("llama", 4)
    before = _state(model)
    _fail_in_block(monkeypatch, 3, RuntimeError("solver failed"))
    with pytest.raises(RuntimeError, match="solver failed"):
        l0prune.prune(model, data, sparsity=0.5, method="obs", rollback_dir=tmp_path,
                      progress=False)
    _assert_untouched(model, before)  # blocks 0-2 came back from their files
    assert in_memory[-3:] == [0, 0, 0] and not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="rollback_dir must be an existing folder"):
        l0prune.prune(model, data, sparsity=0.5, rollback_dir=tmp_path / "missing")


# --- resume --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sequential", [True, False], ids=["sequential", "parallel"])
def test_a_run_stopped_after_block_k_resumes_bit_for_bit(monkeypatch, tmp_path, sequential):
    data = token_batches()
    settings = dict(sparsity=0.5, method="obs", sequential=sequential, progress=False)
    reference = tiny("llama", 4)
    expected = l0prune.prune(reference, data, **settings)
    model = tiny("llama", 4)
    before = _state(model)
    with monkeypatch.context() as patch:
        _fail_in_block(patch, 2, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            l0prune.prune(model, data, checkpoint=tmp_path, **settings)
    _assert_untouched(model, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "block-0000.safetensors", "block-0001.safetensors", "settings.json"]
    solved = []
    _fail_in_block(monkeypatch, 99, RuntimeError(), counter=solved)
    resumed = l0prune.prune(model, data, checkpoint=tmp_path, resume=True, **settings)
    assert solved and all(".2." in name or ".3." in name for name in solved)  # blocks 2, 3 only
    found, truth = _pruned(model, resumed), _pruned(reference, expected)
    for name, (weight, mask) in truth.items():
        assert torch.equal(found[name][0], weight) and torch.equal(found[name][1], mask), name
    assert [(x.name, x.kept, x.relative_error) for x in resumed.layers] == [
        (x.name, x.kept, x.relative_error) for x in expected.layers]
    assert len(list(tmp_path.glob("block-*"))) == 4


def test_a_resume_with_other_settings_or_data_is_refused_in_one_line(monkeypatch, tmp_path):
    data = token_batches()
    with monkeypatch.context() as patch:
        _fail_in_block(patch, 1, RuntimeError("stop"))
        with pytest.raises(RuntimeError, match="stop"):
            l0prune.prune(tiny("llama", 2), data, sparsity=0.5, method="obs",
                          checkpoint=tmp_path, progress=False)
    saved = json.loads((tmp_path / "settings.json").read_text())
    model = tiny("llama", 2)
    before = _state(model)
    with pytest.raises(ValueError) as info:
        l0prune.prune(model, data, sparsity=0.6, method="wanda", checkpoint=tmp_path,
                      resume=True, progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("resume refused")
    assert "budgets (model.layers.0.mlp.down_proj: unstructured(k=1024) there, " \
        "unstructured(k=819) here)" in message
    assert "config (method: obs there, wanda here)" in message
    assert "calibration" not in message and "sequential" not in message
    with pytest.raises(ValueError, match=r"resume refused: .*: calibration \("):
        l0prune.prune(model, token_batches(seed=5), sparsity=0.5, method="obs",
                      checkpoint=tmp_path, resume=True, progress=False)
    _assert_untouched(model, before)
    assert json.loads((tmp_path / "settings.json").read_text()) == saved
    with pytest.raises(ValueError, match="block 0's dense weights differ"):
        other = tiny("llama", 2)
        with torch.no_grad():
            other.model.layers[0].mlp.up_proj.weight.mul_(2)
        l0prune.prune(other, data, sparsity=0.5, method="obs", checkpoint=tmp_path,
                      resume=True, progress=False)


def _stopped_in_block_1(monkeypatch, folder, data):
    """A run of a 2-block LLaMA at 50 % stopped in block 1: block 0 is in ``folder``."""
    with monkeypatch.context() as patch:
        _fail_in_block(patch, 1, RuntimeError("stop"))
        with pytest.raises(RuntimeError, match="stop"):
            l0prune.prune(tiny("llama", 2), data, sparsity=0.5, method="obs",
                          checkpoint=folder, progress=False)


def _rewrite_block(path, change_tensors=None, change_figures=None):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    tensors = load_file(path)
    if change_tensors is not None:
        change_tensors(tensors)
    if change_figures is not None:
        figures = json.loads(metadata["results"])
        change_figures(figures)
        metadata["results"] = json.dumps(figures)
    save_file(tensors, path, metadata)


DOWN = "model.layers.0.mlp.down_proj"


@pytest.mark.parametrize("change, words", [
    (lambda t: t.update({f"{DOWN}.weight": torch.randn(32, 64),
                         f"{DOWN}.mask": torch.ones(32, 64, dtype=torch.bool)}),
     f"layer '{DOWN}': its mask keeps 2048 of 2048 weights, not a support of the budget "
     "unstructured(k=1024)"),
    (lambda t: t[f"{DOWN}.weight"].view(-1).index_fill_(
        0, t[f"{DOWN}.mask"].view(-1).nonzero()[0], float("nan")),
     f"layer '{DOWN}': its weight has 1 NaN or Inf values"),
    (lambda t: t.update({f"{DOWN}.weight": t[f"{DOWN}.weight"].T.contiguous(),
                         f"{DOWN}.mask": t[f"{DOWN}.mask"].T.contiguous()}),
     f"layer '{DOWN}': its weight is 64x32 and mask 64x32, not 32x64"),
    (lambda t: t.pop(f"{DOWN}.mask"), "holds tensors other than each target's weight and mask"),
    (lambda t: t.update({f"{DOWN}.mask": t[f"{DOWN}.mask"].float()}),
     f"layer '{DOWN}': its mask is torch.float32, not boolean"),
])
def test_a_tampered_checkpoint_block_is_refused_in_one_line(monkeypatch, tmp_path, change,
                                                           words):
    data = token_batches()
    _stopped_in_block_1(monkeypatch, tmp_path, data)
    _rewrite_block(tmp_path / "block-0000.safetensors", change)
    model = tiny("llama", 2)
    before = _state(model)
    with pytest.raises(ValueError) as info:
        l0prune.prune(model, data, sparsity=0.5, method="obs", checkpoint=tmp_path,
                      resume=True, progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("resume refused: ")
    assert "block-0000.safetensors" in message and words in message
    _assert_untouched(model, before)


def test_a_resumed_report_counts_from_the_model_not_the_file(monkeypatch, tmp_path):
    data = token_batches()
    _stopped_in_block_1(monkeypatch, tmp_path, data)

    def lie(figures):
        for f in figures:
            f["kept"] = f["total"] // 4

    _rewrite_block(tmp_path / "block-0000.safetensors", change_figures=lie)
    model = tiny("llama", 2)
    report = l0prune.prune(model, data, sparsity=0.5, method="obs", checkpoint=tmp_path,
                           resume=True, progress=False)
    modules = dict(model.named_modules())
    assert [x.kept for x in report.layers] == [
        int(l0prune.mask_of(modules[x.name]).sum()) for x in report.layers]
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)


def test_a_checkpoint_in_use_by_another_run_is_refused_in_one_line(tmp_path):
    from l0prune.io.files import FileLock

    other = FileLock(tmp_path / ".lock")  # another run's lock (a lock of its own file handle)
    assert other.acquire()
    model = tiny("llama", 2)
    before = _state(model)
    try:
        with pytest.raises(ValueError) as info:
            l0prune.prune(model, token_batches(), sparsity=0.5, method="obs",
                          checkpoint=tmp_path, progress=False)
    finally:
        other.release()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {tmp_path} is in use by another run (process "
                              f"{os.getpid()}, which holds its .lock)")
    _assert_untouched(model, before)
    assert not any(tmp_path.iterdir())
    l0prune.prune(model, token_batches(), sparsity=0.5, method="obs", checkpoint=tmp_path,
                  progress=False)  # free again: the run takes the folder and lets it go
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "block-0000.safetensors", "block-0001.safetensors", "settings.json"]


def test_a_run_that_fails_before_a_block_is_done_leaves_no_checkpoint(monkeypatch, tmp_path):
    with monkeypatch.context() as patch:
        _fail_in_block(patch, 0, RuntimeError("stop"))
        with pytest.raises(RuntimeError, match="stop"):
            l0prune.prune(tiny("llama", 2), token_batches(), sparsity=0.5, method="obs",
                          checkpoint=tmp_path / "run.partial" / "obs", progress=False)
    assert not any(tmp_path.iterdir())  # the folders it made went too


def test_resume_says_how_many_blocks_it_takes_and_a_new_run_that_it_starts_again(
        monkeypatch, tmp_path, capsys):
    data = token_batches()
    with monkeypatch.context() as patch:
        _fail_in_block(patch, 2, RuntimeError("stop"))
        with pytest.raises(RuntimeError, match="stop"):
            l0prune.prune(tiny("llama", 4), data, sparsity=0.5, method="obs",
                          checkpoint=tmp_path, progress=False)
    capsys.readouterr()
    settings = dict(sparsity=0.5, method="obs", checkpoint=tmp_path, progress=True)
    l0prune.prune(tiny("llama", 4), data, resume=True, **settings)
    news = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(
        "blocks: ")]
    assert news == [f"resume: 2 of 4 blocks taken from {tmp_path}"]
    l0prune.prune(tiny("llama", 4), data, **settings)
    news = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(
        "blocks: ")]
    assert news == [f"starting again: the 4 finished blocks in {tmp_path} are replaced "
                    "(resume=True, --resume on the command line, takes them)"]


def test_checkpoint_arguments_are_checked(tmp_path):
    model, data = tiny("llama", 2), token_batches()
    cases = [
        (dict(resume=True), "resume=True needs checkpoint="),
        (dict(checkpoint=tmp_path, blockwise=False), "checkpoint= needs block-by-block"),
        (dict(checkpoint=3), "checkpoint must be a folder path, got 3"),
        (dict(blockwise="yes"), "blockwise must be None, True or False, got 'yes'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            l0prune.prune(model, data, sparsity=0.5, progress=False, **kwargs)
    with pytest.raises(ValueError, match="not alpha="):
        l0prune.prune(model, data, alpha=1.1, validation=data, checkpoint=tmp_path,
                      progress=False)
    assert not any(tmp_path.iterdir())


# --- the command line ----------------------------------------------------------------------------

USER_LLAMA = '''
import os
import torch
import transformers

def build():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(config).eval()
    if os.environ.get("FAIL_IN_BLOCK"):  # a crash as block k is pruned (after discovery and
        # the dense validation loss ran it once each)
        calls = []

        def crash(module, args, kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("the machine went away")

        block = model.model.layers[int(os.environ["FAIL_IN_BLOCK"])]
        block.register_forward_pre_hook(crash, with_kwargs=True)
    return model

def calibration():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 97, (4, 12), generator=g)} for _ in range(3)]

def validation():
    return [{**batch, "labels": batch["input_ids"]} for batch in calibration()[:1]]
'''


def test_the_cli_keeps_finished_blocks_and_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    from l0prune.model.masks import permanent_state_dict
    from tests.l0prune.cli.conftest import run_main

    (tmp_path / "userllama.py").write_text(USER_LLAMA)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["prune", "--model", "userllama:build", "--calibration", "userllama:calibration",
            "--validation", "userllama:validation", "--sparsity", 0.5, "--method", "obs",
            "--baseline", "none", "--finetune-epochs", 0, "--threads", 1, "--out", "out",
            "--quiet"]
    monkeypatch.setenv("FAIL_IN_BLOCK", "2")
    failed = run_main(*args, cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert failed.returncode == 1 and "the machine went away" in failed.stderr
    partial = tmp_path / "out.partial" / "obs"
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in partial.iterdir()) == [
        "block-0000.safetensors", "block-0001.safetensors", "settings.json"]
    monkeypatch.delenv("FAIL_IN_BLOCK")
    refused = run_main(*args, "--sparsity", 0.6, "--resume", cwd=tmp_path, capsys=capsys,
                       monkeypatch=monkeypatch)  # the last --sparsity wins
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("l0prune: error: resume refused: ") and "budgets (" in \
        refused.stderr
    resumed = run_main(*args, "--resume", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / "out.partial").exists()
    import userllama

    model = userllama.build()
    l0prune.prune(model, userllama.calibration(), sparsity=0.5, method="obs", progress=False)
    expected = permanent_state_dict(model)
    written = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert written.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(written[key], value), key


def _cli_llama(tmp_path, monkeypatch):
    (tmp_path / "userllama.py").write_text(USER_LLAMA)
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["prune", "--model", "userllama:build", "--calibration", "userllama:calibration",
            "--validation", "userllama:validation", "--sparsity", 0.5, "--method", "obs",
            "--baseline", "none", "--finetune-epochs", 0, "--threads", 1, "--quiet"]


def test_a_second_block_run_on_the_same_out_is_refused_in_one_line(tmp_path, monkeypatch,
                                                                   capsys):
    from l0prune.io.files import FileLock
    from tests.l0prune.cli.conftest import assert_one_line_error, run_main

    args = _cli_llama(tmp_path, monkeypatch)
    (tmp_path / "out.partial" / "obs").mkdir(parents=True)
    first = FileLock(tmp_path / "out.partial" / "obs" / ".lock")  # the first run's lock
    assert first.acquire()
    try:
        done = run_main(*args, "--out", "out", cwd=tmp_path, capsys=capsys,
                        monkeypatch=monkeypatch)
    finally:
        first.release()
    assert_one_line_error(done, "checkpoint out.partial/obs is in use by another run")
    assert not (tmp_path / "out").exists()
    assert not any((tmp_path / "out.partial" / "obs").iterdir())


def test_a_refused_apply_solutions_leaves_no_checkpoint(tmp_path, monkeypatch, capsys):
    from tests.l0prune.cli.conftest import assert_one_line_error, run_main

    args = _cli_llama(tmp_path, monkeypatch)
    run = dict(cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert run_main(*args, "--no-sequential", "--save-problems", "p", **run).returncode == 0
    assert run_main("solve", "p", "--method", "obs", "--quiet", **run).returncode == 0
    done = run_main(*args, "--no-sequential", "--sparsity", 0.6, "--apply-solutions", "p",
                    "--out", "out", **run)
    assert_one_line_error(done, "is not for this run's problem: budget unstructured(k=")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        "p", "userllama.py"]
