"""``l0prune solve`` run: one layer problem from files, solved by one method, its figures printed;
or every problem of a folder written by ``l0prune prune --save-problems DIR``, here or on a dask
cluster (``--workers N``, ``--scheduler ADDRESS``), the solutions and a table written there
(:func:`l0prune.io.problem_files.solve_folder`).

``W`` is the layer's weight (out x in; a convolution's weight is flattened to out x in*kh*kw and
written back in its own shape); ``--hessian`` gives ``H`` (in x in), ``--inputs`` the layer's
inputs ``X`` (``H = X^T X / N``); with neither, ``H = I`` (the plain Frobenius problem).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from pathlib import Path

import torch

from l0prune.io.problem_files import read_index, solve_folder, table
from l0prune.pipeline.solves import options_with_seed
from solvers import LayerProblem, solve
from solvers.bounds import BOUNDS, PERSPECTIVE_MAX_WEIGHTS, SDP_MAX_INPUTS, SDP_MAX_WEIGHTS
from solvers.exact import exact, program_binaries

from .cluster import cluster
from .errors import UsageError
from .tensor_files import check_output, load_tensor, save_tensor
from .values import (
    budget,
    choice,
    fraction,
    integer,
    non_negative,
    positive,
    solver,
    torch_device,
)

__all__ = ["run"]


def _problem(args: argparse.Namespace, W: torch.Tensor) -> LayerProblem:
    family = budget(args.budget or "unstructured", "--budget")
    if family.sized and args.sparsity is not None:
        raise UsageError(f"--budget {family.text} fixes the sparsity: give it without "
                         "--sparsity")
    if not family.sized and args.sparsity is None:
        raise UsageError(f"--budget {family.text} needs --sparsity (a fraction in [0, 1))")
    if not family.sized:
        family = dataclasses.replace(family, sparsity=fraction(args.sparsity, "--sparsity"))
    lam = non_negative(args.lam, "--lam") if args.lam is not None else None
    H = load_tensor(args.hessian, "--hessian") if args.hessian is not None else None
    if args.device is not None:
        W = W.to(torch_device(args.device, "--device"))
    if args.inputs is not None:
        X = load_tensor(args.inputs, "--inputs")
        return LayerProblem.from_inputs(W, X, lam, family)
    return LayerProblem(W, H, lam, family)


def _exact_options(args: argparse.Namespace, method: str) -> dict:
    """``time_limit`` and ``max_binaries`` from their flags, which only ``--method exact`` takes."""
    given = {"--time-limit": args.time_limit, "--max-binaries": args.max_binaries}
    if method != "exact":
        for flag_name, value in given.items():
            if value is not None:
                raise UsageError(f"{flag_name} applies to --method exact only, got --method "
                                 f"{method}")
        return {}
    options = {}
    if args.time_limit is not None:
        options["time_limit"] = positive(args.time_limit, "--time-limit")
    if args.max_binaries is not None:
        options["max_binaries"] = integer(1)(args.max_binaries, "--max-binaries")
    return options


def _check_size(problem: LayerProblem, method: str, options: dict, certify: bool,
                bound: str) -> None:
    """The size limits of the exact solve and of the cone-program bounds, by their flags."""
    out, inp = problem.shape
    if method == "exact":
        binaries = program_binaries(problem)
        limit = options.get("max_binaries", inspect.signature(exact).parameters[
            "max_binaries"].default)
        if binaries > limit:
            raise UsageError(
                f"--method exact: one program of this {out} x {inp} layer has {binaries} binary "
                f"variables, over --max-binaries {limit} (branch and bound grows "
                "exponentially); raise --max-binaries, or use --method admm --certify for a "
                "certified gap"
            )
    if not certify:
        return
    if bound == "perspective" and out * inp > PERSPECTIVE_MAX_WEIGHTS:
        raise UsageError(
            f"--bound perspective takes layers of at most {PERSPECTIVE_MAX_WEIGHTS} weights, "
            f"got {out} x {inp}; use --bound lagrangian (the same relaxation, first-order)"
        )
    if bound == "sdp" and (inp > SDP_MAX_INPUTS or out * inp > SDP_MAX_WEIGHTS):
        raise UsageError(
            f"--bound sdp takes layers of at most {SDP_MAX_INPUTS} inputs and "
            f"{SDP_MAX_WEIGHTS} weights, got {out} x {inp}; use --bound lagrangian"
        )


def _figures(problem: LayerProblem, solution, args: argparse.Namespace, shape) -> dict:
    info = solution.info
    return {
        "weight": args.weight,
        "shape": list(shape),
        "problem": repr(problem),
        "method": args.method,
        "sparsity": solution.sparsity,
        "kept": int(solution.mask.sum()),
        "total": solution.mask.numel(),
        "relative_error": solution.relative_error,
        "objective": solution.objective,
        "lower_bound": solution.lower_bound,
        "gap": solution.gap,
        "seconds": info["seconds"],
        "iterations": info.get("iterations"),
        "converged": info.get("converged"),
        "out": args.out,
    }


#: Flags of one problem, which a folder's problems (each with its own budget) do not take.
_SINGLE = ("hessian", "inputs", "sparsity", "budget", "lam", "certify", "device", "out")


def _folder_run(args: argparse.Namespace, method: str) -> int:
    """``l0prune solve DIR``: every problem of the folder, the solutions written there."""
    given = [f"--{name}" for name in _SINGLE if getattr(args, name) not in (None, False)]
    if given:
        raise UsageError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to one "
                         f"problem W, not to a folder of problems ({args.weight})")
    workers = integer(1)(args.workers, "--workers") if args.workers is not None else None
    retries = integer(0)(args.retries, "--retries") if args.retries is not None else None
    if workers is not None and args.scheduler is not None:
        raise UsageError(f"give --workers or --scheduler, not both (got --workers {workers}, "
                         f"--scheduler {args.scheduler})")
    if retries is not None and workers is None:
        raise UsageError("--retries applies to the cluster --workers N starts")
    read_index(args.weight)  # a folder that is not one of problems: one line, before a cluster
    with cluster(workers, args.scheduler, retries) as executor:
        rows = solve_folder(args.weight, method, executor, options=_exact_options(args, method),
                            seed=args.seed, show_progress=not args.quiet)
    if args.json:
        print(json.dumps({"folder": args.weight, "method": method, "solutions": rows},
                         indent=2))
    else:  # the results, with --quiet too (it drops the progress only)
        print(table(rows, method), end="")
        print(f"wrote {Path(args.weight) / 'solutions'}/ (solutions.json, table.md); apply them "
              f"with l0prune prune ... --apply-solutions {args.weight}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``l0prune solve`` with parsed ``args``; returns the exit status."""
    method = solver()(args.method, "--method")
    if Path(args.weight).is_dir():
        return _folder_run(args, method)
    for name in ("workers", "scheduler", "retries"):
        if getattr(args, name) is not None:
            raise UsageError(f"--{name} applies to a folder of problems (l0prune solve DIR), "
                             f"not to one problem W")
    bound = choice(*BOUNDS)(args.bound, "--bound")
    if args.out is not None:
        check_output(Path(args.out), "--out")
    W = load_tensor(args.weight, "W")
    if args.out is not None:
        check_output(Path(args.out), "--out", W.dtype)  # the solution has W's dtype
    if W.ndim < 2:
        raise UsageError(f"W {args.weight}: must be a matrix (out x in), got shape "
                         f"{tuple(W.shape)}")
    options = _exact_options(args, method)
    problem = _problem(args, W.reshape(W.shape[0], -1))
    _check_size(problem, method, options, args.certify, bound)
    solution = solve(problem, method, certify=args.certify, bound=bound,
                     **options_with_seed(method, options, args.seed))
    if args.out is not None:
        save_tensor(solution.weight.reshape(W.shape), Path(args.out), "--out")
    figures = _figures(problem, solution, args, W.shape)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        width = max(map(len, figures))
        for name, value in figures.items():
            if value is not None:
                shown = f"{value:.6g}" if isinstance(value, float) else value
                print(f"{name.replace('_', ' '):<{width}}  {shown}")
    return 0
