"""The thread benchmark: a user-model prune at the default thread count and at one thread,
on an idle machine and next to a competing busy loop.

``l0prune bench threads [--quick] [--repeat N] [--out FILE]``

The model is a randomly initialised BERT-class encoder (``transformers.BertConfig``: 2 blocks,
hidden size 128; ``--quick``: hidden size 32) pruned by :func:`l0prune.prune` to 50 % with ADMM,
sequential statistics on 8 random sequences of 64 tokens. Every prune runs in a fresh Python
process that imports l0prune before torch, as the command line does. Settings: torch's own
thread count with OpenMP's default spinning wait (what l0prune did before it managed threads)
and with the passive wait ``import l0prune`` sets; l0prune's default
(:func:`l0prune.pipeline.threads.default_threads`); and ``threads=1``. The competing load is one
process spinning in a Python loop, started before and stopped after the prunes it is meant for. Each
setting runs ``--repeat`` times; the table gives the median seconds, the threads the report
recorded and the ratio to one thread in the same load. The table is printed and written as
markdown (default ``bench-results/threads.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["SETTINGS", "main", "prune_once"]

#: label -> (``threads`` argument, extra environment); ``"torch"`` stands for torch's own count.
SETTINGS = {
    "torch's threads, spinning OpenMP (before)": ("torch", {"OMP_WAIT_POLICY": ""}),
    "torch's threads, passive OpenMP": ("torch", {}),
    "l0prune default": (None, {}),
    "1": (1, {}),
}


def prune_once(threads: int | str | None, quick: bool) -> dict:
    """Build the model and prune it once; returns ``seconds`` and the ``threads`` used."""
    import torch
    from transformers import BertConfig, BertModel

    import l0prune

    hidden = 32 if quick else 128
    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=2,
                        num_attention_heads=2, vocab_size=1000, max_position_embeddings=128)
    model = BertModel(config).eval()
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 1000, (4, 64), generator=g)} for _ in range(2)]
    start = time.perf_counter()
    count = torch.get_num_threads() if threads == "torch" else threads
    report = l0prune.prune(model, data, sparsity=0.5, method="admm", targets=r".*encoder.*",
                           progress=False, threads=count)
    return {"seconds": time.perf_counter() - start, "threads": report.threads}


def _worker(threads: int | str | None, quick: bool, env: dict) -> dict:
    argv = [sys.executable, "-m", "l0prune.bench.threads", "--worker",
            str(threads), *(["--quick"] if quick else [])]
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run(quick: bool, repeat: int) -> list[dict]:
    """Every setting without and with the competing load; one dict per (load, setting)."""
    rows = []
    for load in ("none", "busy loop"):
        spinner = _busy_loop() if load == "busy loop" else None
        try:
            for label, (threads, env) in SETTINGS.items():
                runs = [_worker(threads, quick, env) for _ in range(repeat)]
                rows.append({"load": load, "setting": label, "threads": runs[0]["threads"],
                             "seconds": statistics.median(r["seconds"] for r in runs)})
                print(f"{load} / {label}: {rows[-1]['seconds']:.2f} s", file=sys.stderr)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    return rows


def table(rows: list[dict]) -> str:
    """The markdown table of ``rows`` (ratios against ``threads=1`` under the same load)."""
    one = {r["load"]: r["seconds"] for r in rows if r["setting"] == "1"}
    lines = ["| load | setting | threads used | seconds (median) | / one thread |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['load']} | {r['setting']} | {r['threads']} | {r['seconds']:.2f} | "
                     f"{r['seconds'] / one[r['load']]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the thread benchmark from the command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="l0prune bench threads",
                                     description="A user-model prune: default threads against "
                                                 "one thread, idle and next to a busy loop.")
    parser.add_argument("--quick", action="store_true", help="a smaller model")
    parser.add_argument("--repeat", type=int, default=3, help="prunes per setting (3)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/threads.md"),
                        help="markdown file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        named = {"None": None, "torch": "torch"}
        threads = named[args.worker] if args.worker in named else int(args.worker)
        print(json.dumps(prune_once(threads, args.quick)))
        return
    from l0prune.pipeline.threads import available_cpus

    rows = run(args.quick, args.repeat)
    command = shlex.join(["l0prune", "bench", "threads", *argv])
    report = "\n".join([
        "# Thread benchmark", "",
        f"A random-init BERT-class model pruned to 50 % with ADMM; {available_cpus()} CPU(s) "
        f"available to the process (affinity and cgroup quota).", "",
        table(rows), "", f"- command: `{command}`", "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
