"""Prune a Hugging Face encoder with llm-compressor's SparseGPT, in llm-compressor's own
environment (this file imports nothing of l0prune; :mod:`l0prune.bench.llmcompressor_side`
runs it with that environment's python).

``PYTHON llmcompressor_script.py --model DIR --data TEXTS.json --out DIR [--sparsity S]
[--mask-structure N:M] [--threads N]``

``TEXTS.json`` holds ``{"input_ids": [[...], ...], "attention_mask": [[...], ...]}``, the
calibration texts already tokenised (one list per text, unpadded), so both tools see the same
tokens. The model is loaded with ``AutoModel``, pruned by ``oneshot`` with a
``SparseGPTModifier`` on every ``Linear`` of the model's blocks (its default sequential
pipeline, one block at a time; dampening 0.01 of the mean Hessian diagonal, blocks of 128
columns), and its state dict written to ``OUT/model.safetensors``; ``OUT/timing.json`` gives the
wall-clock and CPU seconds of the ``oneshot`` call, the seconds of loading, and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--data", required=True, help="tokenised calibration texts (JSON)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--mask-structure", default="0:0", help="N:M, or 0:0 (unstructured)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    start = time.perf_counter()
    import llmcompressor
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from safetensors.torch import save_file
    from transformers import AutoModel

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.data).read_text())
    dataset = Dataset.from_dict(
        {"input_ids": texts["input_ids"], "attention_mask": texts["attention_mask"]}
    )
    model = AutoModel.from_pretrained(args.model).eval()
    loaded, cpu = time.perf_counter(), time.process_time()
    recipe = SparseGPTModifier(
        sparsity=args.sparsity, mask_structure=args.mask_structure, targets=["Linear"],
        ignore=["re:.*pooler.*"],
    )
    oneshot(
        model=model, dataset=dataset, recipe=recipe,
        num_calibration_samples=len(texts["input_ids"]), shuffle_calibration_samples=False,
        max_seq_length=max(len(ids) for ids in texts["input_ids"]),
    )
    pruned, cpu = time.perf_counter(), time.process_time() - cpu
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(out / "model.safetensors"))
    (out / "timing.json").write_text(json.dumps({
        "oneshot_seconds": pruned - loaded, "oneshot_cpu_seconds": cpu,
        "load_seconds": loaded - start,
        "threads": torch.get_num_threads(), "llmcompressor": llmcompressor.__version__,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
