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
