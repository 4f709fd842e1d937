"""``l0prune prune`` run: prune a model (the built-in digits CNN by default), compare it with a
baseline solver under the same settings, and write the output folder.

The folder holds ``report.json``, ``report.md``, ``recipe.toml``, ``sparsity_vs_loss.png``,
``layers.png`` and the pruned model: ``model.pt`` (the pruned weights under the dense model's
keys) and ``model.sparse.pt`` (the same, compact), or for a Hugging Face model ``model/`` alone
(its folder, dense or with ``--save-format compressed`` compressed); see
:data:`~l0prune.cli.report_files.FILES`.

A block-by-block run with a fixed budget also keeps each finished block in ``OUT.partial/``
(one subfolder per method, :mod:`l0prune.pipeline.resume`), next to the output folder and outside
its atomic replacement, so that it survives a failed run; ``--resume`` continues from there.
What the run wrote there is removed once the output folder is written; a ``OUT.partial/``
that holds anything else is refused before the run starts.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.metadata
import json
import logging
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

import l0prune
from l0prune.config import PruneConfig
from l0prune.io.files import WriteError, writing
from l0prune.io.problem_files import (
    SavedSolutions,
    apply_solutions,
    check_new_folder,
    save_problems,
)
from l0prune.model.blocks import find_stack
from l0prune.pipeline.allocation import IncompatibleBudget
from l0prune.pipeline.resume import foreign_entry, remove_checkpoints
from solvers import methods
from solvers.exact import TooLarge

from .cluster import cluster
from .config import OPTIONS, Settings, resolve
from .default_model import builtin_task
from .errors import UsageError
from .output_dir import check_destination, staged
from .report_files import headline, run_reports, write_reports
from .sources import is_hf
from .task import Task, user_task

__all__ = ["run"]


def _partial(settings: Settings) -> Path:
    """Where the finished blocks are kept until the output folder is written."""
    return Path(f"{settings.out}.partial")


def _check_partial(settings: Settings) -> None:
    """Refuse an ``OUT.partial/`` that holds anything a run did not write there."""
    foreign = foreign_entry(_partial(settings), methods())
    if foreign is not None:
        raise UsageError(
            f"--out {settings.out}: {_partial(settings)}/ holds {foreign}, which no l0prune run "
            "wrote there (it keeps finished blocks in METHOD/ folders); move it or choose "
            "another --out"
        )


def _checkpoint(model: nn.Module, method: str, settings: Settings) -> Path | None:
    """``OUT.partial/METHOD`` for a block-by-block run with a fixed budget, else ``None``."""
    config = settings.config
    if config.alpha is None and config.blockwise is not False and find_stack(model):
        return _partial(settings) / method
    if settings.resume:
        raise UsageError(
            "--resume continues a block-by-block run: the model is not built as a stack of "
            "repeated blocks (an nn.ModuleList of two or more modules of one type)"
        )
    return None


def _config(method: str, task: Task, settings: Settings, progress: bool):
    """The run's configuration for ``method``: the recipe's, with the task's finetuning data
    and the progress bars the flags ask for."""
    finetune = settings.config.finetune
    if finetune is not None:
        finetune = dataclasses.replace(finetune, data=task.finetune_data)
    return settings.config.replace(method=method, finetune=finetune, progress=progress)


def _task(settings: Settings, log) -> Task:
    """What the run works on: the built-in model, a Hugging Face model or the user's own."""
    if settings.model is None:
        return builtin_task(settings.config.seed, settings.quick, log)
    if is_hf(settings.model):
        from .hf_task import hf_task  # imports transformers

        return hf_task(settings)
    return user_task(settings)


def _prune(model: nn.Module, method: str, task: Task, settings: Settings,
           progress: bool, executor=None, solutions=None) -> l0prune.PruneReport:
    config = _config(method, task, settings, progress)
    if settings.gradual is not None:
        return l0prune.gradual(model, task.calibration, config, validation=task.validation,
                               loss_fn=task.loss_fn, steps=settings.gradual)
    checkpoint = _checkpoint(model, method, settings)
    config = config.replace(checkpoint=checkpoint, resume=settings.resume)
    if solutions is not None:
        return apply_solutions(model, task.calibration, solutions.folder, config,
                               validation=task.validation, loss_fn=task.loss_fn)
    return l0prune.prune(model, task.calibration, config, validation=task.validation,
                         loss_fn=task.loss_fn, executor=executor)


def _environment() -> dict[str, object]:
    return {"l0prune": importlib.metadata.version("l0prune"), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def _runs(task: Task, settings: Settings, log, progress: bool, executor,
          solutions) -> tuple[dict, list[dict]]:
    """Prune with the method (the task's model; from ``solutions`` when given) and the
    baseline (a copy of the dense model)."""
    dense_metrics = task.metrics(task.model)
    dense = copy.deepcopy(task.model) if settings.baseline != "none" else None
    runs = []
    for method, model, saved in ((settings.config.method, task.model, solutions),
                                 (settings.baseline, dense, None)):
        if model is None:
            continue
        log(f"pruning with {method}")
        report = _prune(model, method, task, settings, progress, executor, saved)
        runs.append({"method": method, "report": report.to_dict(),
                     "metrics": task.metrics(model)})
    return {"loss": runs[0]["report"]["dense_loss"], "metrics": dense_metrics}, runs


def _comparison(runs: list[dict]) -> dict | None:
    if len(runs) < 2:
        return None
    mine, base = (run["report"] for run in runs)
    loss = mine["pruned_loss"] / base["pruned_loss"] if base["pruned_loss"] else None
    return {"baseline": runs[1]["method"], "kept_vs_baseline": mine["kept"] / base["kept"],
            "loss_vs_baseline": loss}


def _write(folder: Path, task: Task, settings: Settings, data: dict) -> None:
    """Everything but the two reports, then the reports with the sizes of the rest."""
    from .plots import layers_plot, sparsity_loss_plot  # matplotlib loads only to draw

    with _named_as_out(folder, Path(settings.out)):
        if task.save_model is None:
            l0prune.export(task.model, folder / "model.pt", folder / "model.sparse.pt")
        else:
            with writing(folder / "model"):
                task.save_model(task.model, folder / "model")
        runs = run_reports(data)
        with writing(folder / "sparsity_vs_loss.png"):
            sparsity_loss_plot(runs, folder / "sparsity_vs_loss.png")
        with writing(folder / "layers.png"):
            layers_plot(runs, folder / "layers.png")
        with writing(folder / "recipe.toml"):
            (folder / "recipe.toml").write_text(settings.to_toml())
        with writing(folder / "report.json"):
            write_reports(folder, data)


@contextmanager
def _named_as_out(folder: Path, out: Path) -> Iterator[None]:
    """A file of the staging ``folder`` that cannot be written (a full disk), named as the
    user knows it: ``OUT/NAME``."""
    try:
        yield
    except WriteError as err:
        if not err.path.is_relative_to(folder):
            raise
        raise WriteError(out / err.path.relative_to(folder), err.reason) from err.__cause__


@contextmanager
def _usage_errors(settings: Settings) -> Iterator[None]:
    """A budget that does not fit a layer, or an exact solve over its limit, as one line with
    the flags that get round it."""
    try:
        yield
    except IncompatibleBudget as err:
        raise UsageError(
            f"--budget {settings.config.budget.text} does not fit layer {err.layer} (weight "
            f"{'x'.join(map(str, err.shape))}): {err.reason}; leave it dense with --ignore "
            f"{shlex.quote(re.escape(err.layer))}, or every such layer with --skip-incompatible"
        ) from None
    except TooLarge as err:
        raise UsageError(
            f"--method exact: a layer's program has {err.binaries} binary variables, over the "
            f"limit of {err.max_binaries} (branch and bound grows exponentially); prune with "
            "--method admm, or solve one small layer with l0prune solve --method exact"
        ) from None


def _solutions(settings: Settings) -> tuple[Settings, SavedSolutions | None]:
    """The settings with the method of ``--apply-solutions``' solutions, and the solutions
    (``None`` without the flag)."""
    if settings.apply_solutions is None:
        return settings, None
    solutions = SavedSolutions(settings.apply_solutions)
    method = settings.config.method
    if method not in (PruneConfig.method, solutions.method):
        raise UsageError(f"--apply-solutions {settings.apply_solutions} holds solutions by "
                         f"{solutions.method}, not --method {method}")
    if settings.baseline == solutions.method:
        raise UsageError(f"--baseline must differ from the method of the solutions "
                         f"({solutions.method}); use --baseline none to skip the comparison")
    config = settings.config.replace(method=solutions.method)
    return dataclasses.replace(settings, config=config), solutions


def _save_problems(task: Task, settings: Settings, args: argparse.Namespace) -> int:
    """``--save-problems DIR``: write the problems of the task's model; nothing else."""
    folder = settings.save_problems
    index = save_problems(task.model, task.calibration, folder,
                          settings.config.replace(progress=not args.quiet))
    summary = {"problems": folder, "layers": [p["name"] for p in index["problems"]]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {len(index['problems'])} layer problems to {folder}/ (index.json); solve "
              f"them with: l0prune solve {shlex.quote(folder)} --method NAME [--workers N]")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``l0prune prune`` with parsed ``args``; returns the exit status."""
    start = time.perf_counter()
    fields = {option.field for option in OPTIONS}
    settings = resolve({k: v for k, v in vars(args).items() if k in fields}, args.config)
    out = Path(settings.out)
    if settings.save_problems is None:
        check_destination(out)
        _check_partial(settings)
    else:
        check_new_folder(settings.save_problems)

    log = logging.getLogger("l0prune.cli").info
    if settings.config.threads is not None or settings.model is None:
        torch.set_num_threads(settings.config.threads or 1)
    settings, solutions = _solutions(settings)
    with cluster(settings.workers, settings.scheduler, settings.retries) as executor:
        task = _task(settings, log)
        with _usage_errors(settings):
            if settings.save_problems is not None:
                return _save_problems(task, settings, args)
            dense, runs = _runs(task, settings, log, not args.quiet, executor, solutions)
    data = {
        "command": shlex.join(["l0prune", *args.argv]),
        "model": task.description,
        "recipe": settings.as_recipe(),
        "environment": _environment(),
        "dense": dense,
        "runs": runs,
        "comparison": _comparison(runs),
        "seconds": 0.0,
        "files": {},
    }
    with staged(out) as folder:
        data["seconds"] = time.perf_counter() - start
        _write(folder, task, settings, data)
    remove_checkpoints(_partial(settings), methods())
    if args.json:
        print(json.dumps(data, indent=2))
    else:  # the results, with --quiet too (it drops the progress only)
        print("\n".join(headline(data)))
        sizes = ", ".join(f"{name} ({size:,} bytes)" for name, size in data["files"].items())
        print(f"wrote {out}/: {sizes}")
    return 0
