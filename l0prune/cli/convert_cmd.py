"""``l0prune convert``: its flags (the run is :mod:`l0prune.cli.convert_run`, imported only to
run, so that ``--help`` and a mistyped flag answer at once)."""

from __future__ import annotations

import argparse

__all__ = ["FORMATS", "add_parser"]

#: The folder formats, as ``l0prune.save_pretrained`` names them.
FORMATS = ("dense", "compressed", "compressed-tensors")


def add_parser(subparsers, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``convert`` on the command line's ``subparsers``."""
    parser = subparsers.add_parser(
        "convert", parents=parents,
        help="rewrite a Hugging Face model folder in another format",
        description="Read a Hugging Face model folder (dense, l0prune's compressed format, or "
                    "compressed-tensors' sparse-bitmask / sparse-24-bitmask) and write it to a "
                    "new folder in FORMAT, weights bit for bit; the tokenizer, the recipe and "
                    "the other files that are not weights or config are copied.",
    )
    parser.add_argument("source", metavar="IN", help="the model folder to read")
    parser.add_argument("out", metavar="OUT", help="the new folder (must not exist, or be empty)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="dense (any from_pretrained loads it), compressed (l0prune's "
                             "model.sparse.safetensors) or compressed-tensors (its 0.13 layout)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the model run code shipped with its checkpoint")
    parser.set_defaults(run="l0prune.cli.convert_run:run")
