"""The memory benchmark: peak memory of block-by-block pruning against the whole-model path,
and the pruned model's size against the dense one's.

``l0prune bench memory [--blocks 8] [--hidden 1024] [--dtype float32] [--device cpu] ...``

A random-init LLaMA-style causal LM (``transformers.LlamaConfig``: ``--blocks`` blocks of hidden
size ``--hidden``, MLP ``--intermediate``, vocabulary ``--vocab``, in ``--dtype``) is pruned to
``--sparsity`` with ``--method`` and sequential statistics, on ``--samples`` random token
windows of ``--seqlen`` tokens, once block by block and once on the whole-model path. Each run
is a fresh Python process that first prunes a tiny model the same way (so that modules and
kernels loaded on first use are not counted), then measures its peak resident set above that
point (Linux ``VmHWM``, restarted once the model is built so that building it does not count;
``ru_maxrss`` elsewhere); on a CUDA ``--device`` the peak CUDA memory
(``torch.cuda.max_memory_allocated``) too. After the run it measures the model as ``prune``
left it: the bytes of its tensors (parameters, buffers and any tensor a module holds as an
attribute, such as the masked ``weight`` of ``torch.nn.utils.prune``'s form) and the resident
set above the baseline once freed memory is given back (``malloc_trim``), both against the dense
model's bytes.

The budget of the block-by-block design, in the same units:

    budget = 1.2 x (dense model + one block + cached activations + layer solve)

- *dense model*: the model's parameters and buffers before the run (a pruned model holds its
  weights in place, with a mask of 1/32 of a float32 weight beside each);
- *one block*: one block's parameters (the block on the device; its rollback copy);
- *cached activations*: the activation streams, ``streams x samples x seqlen x hidden`` values
  in ``--dtype`` (two streams with sequential statistics, one without);
- *layer solve*: what solving the widest layer (LLaMA's ``down_proj``) takes: its float64
  second moment ``H`` (``in x in``; with sequential statistics also ``G = Y_0^T X``,
  ``out x in``) and the solver's working memory, measured in the same process by
  :meth:`LayerPruner.solve <l0prune.pipeline.layerwise.LayerPruner.solve>` on a random problem of
  that shape. At LLaMA's MLP width it outweighs a block's parameters several times over, on either
  path.

Block mode writes the rollback copies of finished blocks to a temporary folder (``prune``'s
``rollback_dir``); ``--no-offload`` keeps them in memory, adding the stack's parameters to the
peak. Freed memory that glibc keeps in its heap counts in the resident set:
``--mmap-threshold 1048576`` runs both with ``MALLOC_MMAP_THRESHOLD_`` fixed, so that
allocations above 1 MiB go back to the system when freed. The table is printed and written as
markdown (default ``bench-results/memory.md``). ``--quick`` runs a 4-block, hidden-512 model.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import add_threads_option, use_threads

__all__ = ["Figures", "main", "measure", "table"]

MiB = 2**20


@dataclass
class Figures:
    """One run's memory, in bytes, and its time.

    Attributes:
        mode: ``"block"`` or ``"whole"``.
        peak: peak resident set above the resident set before the model was built.
        model: the dense model's parameters and buffers.
        pruned_model: the tensors of the model as ``prune`` left it (:func:`model_bytes`).
        resident: the resident set above the baseline after the run, freed memory given back.
        block: one block's parameters.
        activations: the cached activations of block mode.
        solve: the widest layer's statistics and solver working memory.
        cuda_peak: peak CUDA memory allocated, or ``None`` on the CPU.
        seconds: the run's wall time.
        passes: passes over the calibration data.
    """

    mode: str
    peak: int
    model: int
    pruned_model: int
    resident: int
    block: int
    activations: int
    solve: int
    cuda_peak: int | None
    seconds: float
    passes: int

    @property
    def budget(self) -> int:
        """``1.2 x (dense model + one block + cached activations + layer solve)``."""
        return int(1.2 * (self.model + self.block + self.activations + self.solve))

    @property
    def device_budget(self) -> int:
        """``1.2 x (one block + cached activations + layer solve)``: block mode's budget on
        the device."""
        return int(1.2 * (self.block + self.activations + self.solve))


def _status(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux), else ``None``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _resident() -> int:
    """The resident set now (Linux), else the peak so far."""
    now = _status("VmRSS")
    return now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak() -> int:
    """The peak resident set since :func:`_reset_peak` (Linux), else since the start."""
    peak = _status("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _give_back() -> None:
    """Give freed memory in glibc's heap back to the system (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_peak() -> None:
    """Give freed memory back to the system and restart the peak from here (Linux)."""
    _give_back()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(model) -> int:
    """The bytes of every tensor ``model`` holds, each once: parameters, buffers and tensors
    its modules keep as attributes (``torch.nn.utils.prune``'s masked ``weight`` is one).

    Args:
        model: a torch module.

    Returns:
        The bytes.

    Example:
        >>> import torch
        >>> from torch.nn.utils import prune
        >>> layer = torch.nn.Linear(4, 4, bias=False)
        >>> before = model_bytes(layer)
        >>> _ = prune.random_unstructured(layer, "weight", amount=0.5)
        >>> before, model_bytes(layer)  # weight_orig, weight_mask and weight
        (64, 192)
    """
    import torch

    tensors = {}
    for module in model.modules():
        held = [*module._parameters.values(), *module._buffers.values(),
                *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
        tensors.update((id(t), t) for t in held if t is not None)
    return _bytes(tensors.values())


def _llama(blocks: int, hidden: int, intermediate: int, vocab: int, seqlen: int, dtype: str):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=blocks, num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 64, 1), max_position_embeddings=seqlen,
    )
    return transformers.LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()


def _tokens(samples: int, seqlen: int, vocab: int):
    import torch

    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, vocab, (1, seqlen), generator=g)}
            for _ in range(samples)]


def _layer_solve(args: argparse.Namespace, device) -> int:
    """Bytes to solve the widest layer (``down_proj``: hidden x intermediate) alone: its float64
    statistics (with sequential statistics also ``G``, hidden x intermediate) and the solver's
    peak working memory."""
    import torch
    from torch import nn

    from l0prune.config import PruneConfig
    from l0prune.model.snapshot import Snapshot
    from l0prune.model.statistics import Discovery, Moments
    from l0prune.model.targets import Target
    from l0prune.pipeline.allocation import sized
    from l0prune.pipeline.layerwise import LayerPruner
    from solvers import Unstructured

    cols = args.intermediate
    layer = nn.Linear(cols, args.hidden, bias=False).to(device, getattr(torch, args.dtype))
    target = Target("down_proj", layer)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        A = torch.randn(cols, cols, generator=g, dtype=torch.float64)
        H = (A @ A.T / cols + torch.eye(cols, dtype=torch.float64)).unsqueeze(0).to(device)
        del A
    if args.sequential:  # the down projection keeps the dense outputs: G = Y_0^T X is out x in
        with torch.no_grad():
            G = layer.weight.double() @ H[0]
        energy = ((G * layer.weight.double()).sum()).reshape(1)
        moments = Moments(H, outputs=G.unsqueeze(0), energy=energy)
    else:
        moments = Moments(H)
    config = PruneConfig(sparsity=args.sparsity, method=args.method,
                         sequential=args.sequential, progress=False)
    pruner = LayerPruner(
        layer, [], [target], Discovery(["down_proj"], {"down_proj": 1}, {"down_proj": 0}),
        Snapshot(layer), config, device=device,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    _reset_peak()
    start = _resident()
    pruner.solve(target, sized(target, Unstructured(), args.sparsity), moments)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - before
    statistics = (cols * cols + (args.hidden * cols if args.sequential else 0)) * 8
    return statistics + _peak() - start


def measure(args: argparse.Namespace) -> Figures:
    """Build the model and data, prune in ``args.child`` mode, and measure (in this process).

    A tiny model is pruned first the same way, so that what loads on first use (modules,
    kernels) is not counted; the baseline is the resident set after it.

    Args:
        args: the parsed options.

    Returns:
        The :class:`Figures`.
    """
    use_threads(args.threads)
    import torch

    import l0prune

    block_mode = args.child == "block"
    device = torch.device(args.device)

    def run(model, data, folder):
        return l0prune.prune(
            model, data, sparsity=args.sparsity, method=args.method,
            sequential=args.sequential, device=device, progress=False, blockwise=block_mode,
            rollback_dir=folder if args.offload and block_mode else None,
        )

    with tempfile.TemporaryDirectory() as folder:
        run(_llama(2, 64, 128, 256, 16, args.dtype), _tokens(2, 16, 256), folder)
        solve = _layer_solve(args, device)
        _reset_peak()
        baseline = _resident()
        model = _llama(args.blocks, args.hidden, args.intermediate, args.vocab, args.seqlen,
                       args.dtype)
        data = _tokens(args.samples, args.seqlen, args.vocab)
        dense = model_bytes(model)
        block = _bytes(model.model.layers[0].parameters())
        _reset_peak()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        report = run(model, data, folder)
        seconds = time.perf_counter() - start
        peak = _peak() - baseline
    _give_back()
    resident = _resident() - baseline
    cuda = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    itemsize = torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    return Figures(
        mode=args.child, peak=peak, model=dense, pruned_model=model_bytes(model),
        resident=resident, block=block,
        activations=(2 if args.sequential else 1) * args.samples * args.seqlen * args.hidden
        * itemsize, solve=solve, cuda_peak=cuda, seconds=seconds,
        passes=report.calibration_passes,
    )


def _run_child(mode: str, argv: list[str], mmap_threshold: int | None) -> Figures:
    env = dict(os.environ)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    done = subprocess.run(
        [sys.executable, "-m", "l0prune.bench.memory", *argv, "--child", mode],
        capture_output=True, text=True, check=False, env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} run failed:\n{done.stderr[-2000:]}")
    return Figures(**json.loads(done.stdout.strip().splitlines()[-1]))


def table(rows: list[Figures], args: argparse.Namespace, command: str) -> str:
    """The markdown table of ``rows`` (block mode first).

    Args:
        rows: the runs.
        args: the options they ran with.
        command: the command line, for the record.

    Returns:
        The table with its context lines.

    Example:
        >>> row = Figures("block", 500 * MiB, 400 * MiB, 412 * MiB, 430 * MiB, 50 * MiB,
        ...               8 * MiB, 40 * MiB, None, 10.0, 1)
        >>> args = argparse.Namespace(blocks=8, hidden=1024, intermediate=2816, vocab=8192,
        ...                           samples=8, seqlen=128, method="obs", sparsity=0.5,
        ...                           sequential=True, device="cpu", threads=1, offload=True,
        ...                           mmap_threshold=None, dtype="float32")
        >>> print(table([row], args, "cmd").splitlines()[8])
        | block | 500 | 400 | 412 (1.03x) | 430 (1.07x) | 50 | 8 | 40 | 598 | 0.84 | - | 1 | 10.0 |
    """
    lines = [
        "# Memory benchmark",
        "",
        f"command: `{command}`; {args.threads or 'default'} CPU thread(s)",
        "",
        f"Random-init LLaMA-style model: {args.blocks} blocks, hidden {args.hidden}, MLP "
        f"{args.intermediate}, vocabulary {args.vocab}, {args.dtype}; {args.samples} windows of "
        f"{args.seqlen} tokens; {args.method} at {args.sparsity:g}, "
        f"{'sequential' if args.sequential else 'parallel'} statistics, device {args.device}; "
        f"block mode's rollback copies {'on disk' if args.offload else 'in memory'}; "
        + ("glibc's adaptive mmap threshold. " if args.mmap_threshold is None else
           f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}. ") +
        "MiB; peak: resident memory above the process before the model was built; pruned "
        "model: its tensors after the run, and the resident set then (freed memory given "
        "back), each x the dense model; budget = 1.2 x (dense model + one block + activations "
        "+ layer solve).",
        "",
        "| mode | peak RSS | dense model | pruned model | resident after | one block | "
        "activations | layer solve | budget | peak / budget | peak CUDA | passes | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cuda = "-" if row.cuda_peak is None else f"{row.cuda_peak / MiB:.0f}"
        lines.append(
            f"| {row.mode} | {row.peak / MiB:.0f} | {row.model / MiB:.0f} | "
            f"{row.pruned_model / MiB:.0f} ({row.pruned_model / row.model:.2f}x) | "
            f"{row.resident / MiB:.0f} ({row.resident / row.model:.2f}x) | "
            f"{row.block / MiB:.0f} | "
            f"{row.activations / MiB:.0f} | {row.solve / MiB:.0f} | "
            f"{row.budget / MiB:.0f} | {row.peak / row.budget:.2f} | {cuda} | {row.passes} | "
            f"{row.seconds:.1f} |"
        )
    first = rows[0]
    if first.cuda_peak is None:
        lines += ["", "Peak CUDA memory: not run (no GPU). On a CUDA --device, block mode's "
                  "budget there is 1.2 x (one block + activations + layer solve) = "
                  f"{first.device_budget / MiB:.0f} MiB."]
    else:
        lines += ["", f"Block mode's CUDA budget: 1.2 x (one block + activations + layer solve) "
                  f"= {first.device_budget / MiB:.0f} MiB; peak / budget "
                  f"{first.cuda_peak / first.device_budget:.2f}."]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l0prune bench memory")
    parser.add_argument("--blocks", type=int, default=8, help="transformer blocks (default 8)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (default 1024)")
    parser.add_argument("--intermediate", type=int, default=2816,
                        help="MLP size (default 2816, LLaMA's ratio)")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary (default 8192)")
    parser.add_argument("--samples", type=int, default=8, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=128, help="tokens per window")
    parser.add_argument("--method", default="obs", help="solver (default obs)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="sparsity (default 0.5)")
    parser.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=True,
                        help="sequential statistics (default) or --no-sequential")
    parser.add_argument("--offload", action=argparse.BooleanOptionalAction, default=True,
                        help="block mode's rollback copies on disk (default) or in memory")
    parser.add_argument("--dtype", default="float32",
                        choices=("float32", "bfloat16", "float16"),
                        help="the model's dtype (default float32)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--mmap-threshold", type=int, metavar="BYTES",
                        help="run both with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (allocations "
                             "above it are given back to the system when freed); default: "
                             "the allocator's own, adaptive threshold")
    parser.add_argument("--quick", action="store_true", help="4 blocks of hidden 512")
    parser.add_argument("--out", default="bench-results/memory.md", help="markdown output file")
    parser.add_argument("--child", choices=("block", "whole"), help=argparse.SUPPRESS)
    add_threads_option(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run both modes in fresh processes, print the table and write it to ``--out``.

    Args:
        argv: command-line options (those after ``l0prune bench NAME``).

    Returns:
        None.

    Example:
        >>> main(["--quick", "--out", "/tmp/memory.md"])  # doctest: +SKIP
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.quick:
        args.blocks, args.hidden, args.intermediate = 4, 512, 1408
        argv = [a for a in argv if a != "--quick"] + [
            "--blocks", "4", "--hidden", "512", "--intermediate", "1408"]
    if args.child is not None:
        print(json.dumps(measure(args).__dict__))
        return
    rows = [_run_child(mode, argv, args.mmap_threshold) for mode in ("block", "whole")]
    text = table(rows, args, "l0prune bench memory " + " ".join(argv))
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
