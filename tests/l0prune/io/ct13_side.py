"""compressed-tensors 0.13's side of the layout check, run with the python of an environment
that has it (``L0PRUNE_CT13_PYTHON``); it imports nothing of l0prune.

``PYTHON ct13_side.py decompress FOLDER OUT.safetensors``: ``ModelCompressor.from_pretrained``
of the folder decompresses its weights into a model built from its config; the model's state
dict is written to ``OUT``.

``PYTHON ct13_side.py compress DENSE FOLDER FORMAT``: the dense folder's model compressed by
``ModelCompressor`` in ``FORMAT`` (targets every ``Linear`` but ``lm_head``) and saved as
llm-compressor saves it (``save_pretrained`` of the compressed state dict, then the config).
"""

import sys


def decompress(folder: str, out: str) -> None:
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    compressor = ModelCompressor.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    compressor.decompress(folder, model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out,
              metadata={"format": compressor.sparsity_config.format})


def compress(dense: str, folder: str, format: str) -> None:
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import SparsityCompressionConfig
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dense)
    config = SparsityCompressionConfig.load_from_registry(
        format, targets=["Linear"], ignore=["lm_head"],
        sparsity_structure="2:4" if format == "sparse-24-bitmask" else "unstructured")
    compressor = ModelCompressor.from_pretrained_model(model, sparsity_config_or_format=config)
    model.save_pretrained(folder, state_dict=compressor.compress(model))
    compressor.update_config(folder)


if __name__ == "__main__":
    {"decompress": decompress, "compress": compress}[sys.argv[1]](*sys.argv[2:])
