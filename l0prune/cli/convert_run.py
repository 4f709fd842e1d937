"""``l0prune convert IN OUT --format FORMAT``: a Hugging Face model folder in another format.

The model of ``IN`` is read by :func:`l0prune.load_pretrained` (so every format it reads, a
folder lacking a tensor refused) and written by :func:`l0prune.save_pretrained` in ``FORMAT``;
the files of ``IN`` that are neither weights nor the configs ``save_pretrained`` writes (the
tokenizer, ``recipe.toml`` / ``recipe.yaml``, a README) are copied, so a run's recipe goes with
its model. ``OUT`` is written as a whole or not at all, and must not exist or be empty.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import l0prune

from .errors import UsageError
from .hf_task import quiet_transformers
from .output_dir import staged

__all__ = ["run"]

log = logging.getLogger("l0prune.cli")

#: Files ``save_pretrained`` writes itself.
_WRITTEN = {"config.json", "generation_config.json"}
#: Suffixes of weight files (of any format) and their indexes.
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf",
            ".index.json")


def _carried(source: Path) -> list[Path]:
    """The files of ``source`` that go with the model: neither weights nor its configs."""
    return sorted(p for p in source.iterdir() if p.is_file() and not p.is_symlink()
                  and p.name not in _WRITTEN and not p.name.endswith(_WEIGHTS))


def _check(source: Path, out: Path) -> None:
    if not source.is_dir():
        raise UsageError(f"IN {source}: no such folder")
    if out.resolve() == source.resolve():
        raise UsageError(f"OUT {out} is IN; give a new folder")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UsageError(f"OUT {out}: exists and is not an empty folder; give a new one")


def run(args: argparse.Namespace) -> int:
    """Run ``l0prune convert`` with parsed ``args``; returns the exit status."""
    source, out = Path(args.source), Path(args.out)
    _check(source, out)
    quiet_transformers()
    model = l0prune.load_pretrained(source, trust_remote_code=args.trust_remote_code)
    with staged(out) as folder:
        saved = l0prune.save_pretrained(model, folder, format=args.format)
        for path in _carried(source):
            shutil.copy2(path, folder / path.name)
    summary = {"in": str(source), "out": str(out), "format": args.format,
               "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
               "weight_bytes": saved.weight_bytes}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        log.info("wrote %s/ (%s): %s bytes, weights %s bytes", out, args.format,
                 f"{summary['bytes']:,}", f"{saved.weight_bytes:,}")
    return 0
