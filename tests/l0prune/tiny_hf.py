"""Tiny random-init Hugging Face models built from configs and saved with a tokenizer trained
here on Python's own sources: nothing is downloaded."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

VOCAB = 320
KINDS = ("gpt2", "opt", "llama", "bert")
MAX_LENGTH = 64


def corpus() -> tuple[str, str]:
    """Training and held-out text: the sources of a few standard-library modules."""
    import argparse
    import csv
    import json
    import string
    import textwrap

    train = "\n\n".join(inspect.getsource(m) for m in (argparse, csv, string))
    valid = "\n\n".join(inspect.getsource(m) for m in (json, textwrap))
    return train, valid


def tokenizer(text: str):
    """A byte-level BPE tokenizer of :data:`VOCAB` tokens trained on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=MAX_LENGTH)


def config(kind: str, hidden: int = 32):
    """A 2-layer config of ``kind`` (gpt2, opt, llama, bert) with hidden size ``hidden``."""
    import transformers

    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if kind == "gpt2":
        return transformers.GPT2Config(n_embd=hidden, n_layer=2, n_head=2,
                                       n_positions=MAX_LENGTH, **common)
    if kind == "opt":
        return transformers.OPTConfig(hidden_size=hidden, ffn_dim=2 * hidden,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      max_position_embeddings=MAX_LENGTH,
                                      word_embed_proj_dim=hidden, **common)
    if kind == "llama":
        return transformers.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2,
                                        max_position_embeddings=MAX_LENGTH, **common)
    if kind == "bert":
        return transformers.BertConfig(hidden_size=hidden, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=2 * hidden,
                                       max_position_embeddings=MAX_LENGTH, vocab_size=VOCAB,
                                       pad_token_id=0)
    raise ValueError(kind)


def model(kind: str, hidden: int = 32, seed: int = 0):
    """A random-init model of ``kind``: the causal LM class, or ``BertModel`` for bert."""
    import transformers

    torch.manual_seed(seed)
    cls = {"gpt2": transformers.GPT2LMHeadModel, "opt": transformers.OPTForCausalLM,
           "llama": transformers.LlamaForCausalLM, "bert": transformers.BertModel}[kind]
    return cls(config(kind, hidden)).eval()


def windows(seed: int = 0, n: int = 3, length: int = 16) -> list[dict]:
    """``n`` batches of one random token window each (seeded), as calibration."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (1, length), generator=g)} for _ in range(n)]


def pruned(kind: str, hidden: int = 64, **budget):
    """A random-init model of ``kind`` pruned by OBS on :func:`windows` under ``budget``."""
    import l0prune

    pruned_model = model(kind, hidden)
    l0prune.prune(pruned_model, windows(), method="obs", progress=False, **budget)
    return pruned_model


def save(kind: str, folder: Path, tok=None, hidden: int = 32) -> Path:
    """Save a model of ``kind`` (and ``tok``, if given) to ``folder``."""
    model(kind, hidden).save_pretrained(folder)
    if tok is not None:
        tok.save_pretrained(folder)
    return folder
