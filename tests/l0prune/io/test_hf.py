"""Which Hugging Face configs are causal LMs, their maximum length, and loading by folder."""

import pytest

from l0prune.io import hf
from tests.l0prune import tiny_hf

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("kind, causal", [("gpt2", True), ("opt", True), ("llama", True),
                                          ("bert", False)])
def test_causal_lm_from_architectures_and_from_model_type(kind, causal):
    config = tiny_hf.config(kind)
    assert not config.architectures
    assert hf.is_causal_lm(config) is causal
    config.architectures = [type(tiny_hf.model(kind)).__name__]
    assert hf.is_causal_lm(config) is causal
    config.architectures = ["BertForMaskedLM"] if causal else ["BertLMHeadModel"]
    assert hf.is_causal_lm(config) is not causal
    assert hf.model_class(config) is (transformers.AutoModel if causal
                                      else transformers.AutoModelForCausalLM)


def test_max_length_from_the_config_or_the_tokenizer():
    assert hf.max_length(tiny_hf.config("gpt2")) == tiny_hf.MAX_LENGTH
    assert hf.max_length(tiny_hf.config("llama")) == tiny_hf.MAX_LENGTH

    class Tokenizer:
        model_max_length = 77

    class Unbounded:
        model_max_length = int(1e30)

    assert hf.max_length(object(), Tokenizer()) == 77
    assert hf.max_length(object(), Unbounded()) is None


def test_loads_folders_and_refuses_paths_that_are_not_there(hf_folder):
    model = hf.load_model(str(hf_folder / "opt"))
    assert type(model).__name__ == "OPTForCausalLM" and not model.training
    assert type(hf.load_model(str(hf_folder / "bert"))).__name__ == "BertModel"
    assert len(hf.load_tokenizer(str(hf_folder / "opt"))) == tiny_hf.VOCAB
    for name in ("./absent", "/absent/folder", "a/b/c"):
        with pytest.raises(ValueError, match="does not exist"):
            hf.load_model(name)


def test_a_folder_without_tokenizer_files_has_no_tokenizer(tmp_path):
    tiny_hf.save("llama", tmp_path)
    with pytest.raises(ValueError, match="has no tokenizer"):
        hf.load_tokenizer(str(tmp_path))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache under ``tmp_path``; ``add(name, save)`` puts a model in
    it (``save(folder)`` writes the snapshot) and returns the snapshot folder."""
    import huggingface_hub.constants

    root = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def add(name, save):
        repo = root / f"models--{name.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0" * 40)
        snapshot = repo / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        save(snapshot)
        return snapshot

    return add


@pytest.mark.parametrize("format", ["compressed", "compressed-tensors"])
def test_a_compressed_hub_model_is_read_from_its_snapshot(hub_cache, format):
    import torch

    import l0prune

    model = tiny_hf.model("llama")
    l0prune.prune(model, [{"input_ids": torch.arange(16).reshape(1, 16)}], sparsity=0.5,
                  method="magnitude", progress=False)
    hub_cache("org/tiny", lambda folder: l0prune.save_pretrained(model, folder, format=format))
    back = hf.load_model("org/tiny")
    reference = l0prune.model.masks.permanent_state_dict(model)
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_a_hub_model_lacking_a_tensor_is_refused(hub_cache):
    def save(folder):
        config = tiny_hf.config("gpt2")
        config.n_layer = 1
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
        config.n_layer = 2
        config.save_pretrained(folder)

    hub_cache("org/short", save)
    with pytest.raises(ValueError, match="'org/short': its weights lack "
                                         "'transformer.h.1.ln_1.weight'"):
        hf.load_model("org/short")
