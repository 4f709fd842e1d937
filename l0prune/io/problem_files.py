"""Layer problems as files: statistics on one machine, solves on others, solutions back.

Three steps, each a function here and a command:

1. :func:`save_problems` (``l0prune prune --save-problems DIR``) takes the statistics of a
   ``sequential=False`` run at a fixed budget and writes every target's problem instead of
   solving it; the model is left as it was.
2. :func:`solve_folder` (``l0prune solve DIR [--workers N | --scheduler ADDRESS]``) solves every
   problem of a folder with one method, here or on a cluster, and writes the solutions and a
   table.
3. :func:`apply_solutions` (``l0prune prune --apply-solutions DIR``) runs the same prune as
   step 1 with the solutions read from the folder instead of solved: the same model, bit for
   bit, as a direct run with that method (the statistics are taken again to check that every
   solution belongs to this model's problem: names, shapes, budgets and the SHA-256 of ``W``
   and ``H`` must match, else one line naming the layer, and the model is left as it was).

Why ``sequential=False`` only: with ``sequential=True`` (the default of a run) each input
group's statistics are taken with the groups before it already pruned, so a problem only exists
once the solutions before it are known; the problems of such a run cannot be written up front.
Block by block, ``sequential=False`` takes each block's statistics from the dense stream, so all
problems are known in one pass, as on the whole-model path. Sequential runs scale out through
``executor=`` instead (a dask cluster solving each group's layers together).

The folder::

    index.json                  {"format": "l0prune-problems", "version": 1, "sequential": false,
                                 "targets": {name: weight shape}, "problems": [{"name", "shape"
                                 (groups, out, in), "budget", "W", "H" (files), "W_sha256",
                                 "H_sha256"}, ...]}
    problems/NNNN.safetensors   "W": the dense weight of problem NNNN, (groups, out, in)
    moments/NNNN.safetensors    "H": X^T X / N per group, float64, one file per input group
                                (the layers that read one input share it)
    solutions/                  solutions.json (method, options, per problem: file, kept,
                                relative error, seconds), table.md, NNNN.safetensors
                                ("weight", "mask")
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file

from l0prune.config import PruneConfig
from l0prune.io.files import save_safetensors, writing
from l0prune.model.targets import Target
from l0prune.pipeline.executors import LayerSolves, LayerTask
from l0prune.pipeline.progress import progress
from l0prune.pipeline.solves import (
    TargetSolution,
    options_with_seed,
    solution_fault,
    solve_target,
    target_error,
    target_problems,
)
from l0prune.pipeline.workflow import configured
from l0prune.report import PruneReport
from l0prune.validate import first_line, inside
from solvers import Budget
from solvers.many import run_tasks

__all__ = ["ProblemWriter", "SavedSolutions", "apply_solutions", "check_new_folder",
           "load_problem", "read_index",
           "save_problems", "solve_folder", "table"]

FORMAT, VERSION = "l0prune-problems", 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.numpy().tobytes())
    return digest.hexdigest()


def read_index(folder: str | os.PathLike) -> dict:
    """The ``index.json`` of a problem folder, checked.

    Args:
        folder: a folder written by :func:`save_problems`.

    Returns:
        The index.

    Raises:
        ValueError: one line when the folder or its index is missing or not of this format.
    """
    path = Path(folder) / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder} is not a problem folder: no index.json (write one with "
                         "l0prune prune --save-problems DIR)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot be read ({first_line(err)})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path}: not an l0prune problem index (format {FORMAT!r})")
    if index.get("version") != VERSION:
        raise ValueError(f"{path}: version {index.get('version')!r}, this l0prune reads "
                         f"{VERSION}")
    fault = _index_fault(Path(folder), index)
    if fault is not None:
        raise ValueError(f"{path}: {fault}")
    return index


def _index_fault(folder: Path, index: Mapping) -> str | None:
    """What is wrong with the entries of a problem folder's index, or ``None``: each problem
    has a name, a ``(groups, out, in)`` shape, a budget that fits it, ``W`` and ``H`` files
    inside the folder and their digests; the targets map names to weight shapes."""
    targets, problems = index.get("targets"), index.get("problems")
    if not isinstance(targets, dict) or not all(
        isinstance(v, list) and all(_count(n) for n in v) for v in targets.values()
    ):
        return "'targets' must map layer names to weight shapes"
    if not isinstance(problems, list):
        return "'problems' must be a list"
    names = set()
    for i, problem in enumerate(problems):
        where = f"problem {i}"
        if not isinstance(problem, dict) or not isinstance(problem.get("name"), str):
            return f"{where} must be an object with a layer name"
        where = f"problem {i} ({problem['name']!r})"
        if problem["name"] in names:
            return f"{where} appears twice"
        names.add(problem["name"])
        shape = problem.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(_count(n) for n in shape)):
            return f"{where}: shape must be [groups, out, in], got {shape!r}"
        try:
            Budget.from_json(problem.get("budget")).check(tuple(shape[1:]))
        except ValueError as err:
            return f"{where}: budget {problem.get('budget')!r}: {first_line(err)}"
        for key in ("W", "H"):
            try:
                inside(folder, problem.get(key), f"{where}: {key}")
            except ValueError as err:
                return str(err)
        for key in ("W_sha256", "H_sha256"):
            if not (isinstance(problem.get(key), str) and _SHA256.fullmatch(problem[key])):
                return f"{where}: {key} must be a SHA-256 in hex, got {problem.get(key)!r}"
    return None


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_fixed(sequential: bool, fixed: bool, what: str) -> None:
    if sequential:
        raise ValueError(
            f"{what} needs sequential=False (--no-sequential): with sequential=True each input "
            "group's statistics depend on the solutions of the groups before it, so its "
            "problems cannot be written up front; scale a sequential run out with executor= "
            "(--workers N / --scheduler ADDRESS) instead"
        )
    if not fixed:
        raise ValueError(f"{what} works with a fixed budget (sparsity= or a sized budget), not "
                         "alpha= (the search solves anew at every trial)")


class ProblemWriter(LayerSolves):
    """Writes each layer task's problem into ``folder`` instead of solving it.

    The solutions it gives back are stand-ins (the dense weight, every weight kept), so
    :func:`l0prune.prune` puts the model back when the run ends; :meth:`finish` writes the
    index. Use :func:`save_problems`.

    Args:
        folder: an existing empty folder.
    """

    solves_nothing = True

    def statistics(self, method: str, options: Mapping) -> str:
        """``"full"``: a problem file serves any method."""
        return "full"

    def __init__(self, folder: str | os.PathLike):
        super().__init__(None)
        self.folder = Path(folder)
        self.targets: dict[str, list[int]] = {}
        self.problems: list[dict] = []
        self.moment_files = 0
        (self.folder / "problems").mkdir()
        (self.folder / "moments").mkdir()

    def check(self, *, targets: Sequence[Target], sequential: bool, fixed: bool) -> None:
        _check_fixed(sequential, fixed, "saving the layer problems")
        self.targets = {t.name: list(t.weight_shape) for t in targets}

    def submit(self, tasks: Sequence[LayerTask]) -> Callable:
        return partial(self._solutions, list(tasks))

    def _solutions(self, tasks: Sequence[LayerTask],
                   on_done: Callable[[int], None] | None = None) -> list[list[TargetSolution]]:
        moments: dict[int, tuple[str, str]] = {}  # one file per input group, in this batch
        solutions = []
        for i, task in enumerate(tasks):
            if id(task.moments) not in moments:
                name = f"moments/{self.moment_files:04d}.safetensors"
                H = task.moments.H.detach().cpu().contiguous()
                save_safetensors({"H": H}, self.folder / name)
                moments[id(task.moments)] = (name, _sha256(H))
                self.moment_files += 1
            W = task.W.detach().cpu().contiguous()
            name = f"problems/{len(self.problems):04d}.safetensors"
            save_safetensors({"W": W}, self.folder / name)
            self.problems.append({
                "name": task.name, "shape": list(W.shape),
                "budget": task.budgets[0].to_json(),
                "W": name, "H": moments[id(task.moments)][0], "W_sha256": _sha256(W),
                "H_sha256": moments[id(task.moments)][1],
            })
            solutions.append([TargetSolution(
                task.W, torch.ones_like(task.W, dtype=torch.bool), 0.0, 0.0)])
            if on_done is not None:
                on_done(i)
        return solutions

    def finish(self) -> dict:
        """Write ``index.json``; returns the index."""
        index = {"format": FORMAT, "version": VERSION, "sequential": False,
                 "targets": self.targets, "problems": self.problems}
        with writing(self.folder / "index.json"):
            (self.folder / "index.json").write_text(json.dumps(index, indent=1))
        return index


class SavedSolutions(LayerSolves):
    """Gives back the solutions :func:`solve_folder` wrote, each checked against the task.

    The files are untrusted: the problem must be this run's (budget, method, options and the
    SHA-256 of ``W`` and ``H``), and the solution one of it (:func:`~l0prune.pipeline.solves.
    solution_fault`: shape and dtype exactly, a boolean mask met by the budget, the weight zero
    off it, finite values); its relative error is recomputed from the problem, not read.

    Args:
        folder: a problem folder with ``solutions/``.

    Raises:
        ValueError: one line when the folder has no index or no solutions, or they are not
            well formed.
    """

    def __init__(self, folder: str | os.PathLike):
        super().__init__(None)
        self.folder = Path(folder)
        self.index = read_index(folder)
        path = self.folder / "solutions" / "solutions.json"
        try:
            self.solved = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{folder} has no solutions: solve it first (l0prune solve "
                             f"{folder})") from None
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot be read ({first_line(err)})") from None
        fault = _solved_fault(self.folder / "solutions", self.solved)
        if fault is not None:
            raise ValueError(f"{path}: {fault}")
        self.method, self.options = self.solved["method"], self.solved["options"]
        problems, solutions = self.index["problems"], self.solved["solutions"]
        if [p["name"] for p in problems] != [s["name"] for s in solutions]:
            raise ValueError(f"{path}: its solutions are not those of {folder}'s index.json "
                             "(solve the folder again)")
        self.by_name = {p["name"]: (p, s) for p, s in zip(problems, solutions, strict=True)}

    def statistics(self, method: str, options: Mapping) -> str:
        """``"full"``: each solution is checked against its problem's ``H``."""
        return "full"

    def check(self, *, targets: Sequence[Target], sequential: bool, fixed: bool) -> None:
        _check_fixed(sequential, fixed, "applying saved solutions")
        saved = self.index["targets"]
        here = {t.name: list(t.weight_shape) for t in targets}
        if list(saved) != list(here):
            missing = [n for n in saved if n not in here][:3]
            extra = [n for n in here if n not in saved][:3]
            raise ValueError(
                f"the solutions in {self.folder} are for other layers: targets there "
                f"{len(saved)}, here {len(here)}; there only {missing}, here only {extra}"
            )
        for name, shape in here.items():
            if saved[name] != shape:
                raise ValueError(
                    f"the solutions in {self.folder} are for another model: layer {name!r} "
                    f"has weight {'x'.join(map(str, saved[name]))} there, "
                    f"{'x'.join(map(str, shape))} here"
                )

    def submit(self, tasks: Sequence[LayerTask]) -> Callable:
        return partial(self._solutions, list(tasks))

    def _solutions(self, tasks: Sequence[LayerTask],
                   on_done: Callable[[int], None] | None = None) -> list[list[TargetSolution]]:
        solutions = []
        for i, task in enumerate(tasks):
            problem, solved = self.by_name[task.name]
            differs = self._differs(task, problem)
            if differs:
                raise ValueError(f"the solution of layer {task.name!r} in {self.folder} is not "
                                 f"for this run's problem: {differs}")
            weight, mask = self._solution(task, solved)
            problems = task.problems() if task.problems is not None else target_problems(
                task.W, task.moments.H, None, None, check_psd=False)
            solutions.append([TargetSolution(weight, mask, target_error(problems, weight),
                                             solved["seconds"])])
            if on_done is not None:
                on_done(i)
        return solutions

    def _solution(self, task: LayerTask, solved: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight and mask of ``task``'s solution file, checked to be a solution of its
        problem, where the task's weight is."""
        path = self.folder / "solutions" / solved["file"]
        try:
            saved = load_file(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot be read ({first_line(err)})") from None
        weight, mask = saved.get("weight"), saved.get("mask")
        fault = solution_fault(weight, mask, task.budgets[0], task.W.shape, task.W.dtype)
        if fault is not None:
            raise ValueError(f"{path}: the solution of layer {task.name!r} is refused: {fault}")
        return weight.to(task.W.device), mask.to(task.W.device)

    def _differs(self, task: LayerTask, problem: Mapping) -> str | None:
        """What of ``task`` differs from the saved problem and solve, or ``None``."""
        budget = Budget.from_json(problem["budget"])
        if [budget] != list(task.budgets):
            return f"budget {budget.text} there, {task.budgets[0].text} here"
        if task.method != self.method:
            return f"method {self.method} there, {task.method} here"
        options = json.loads(json.dumps(dict(task.options), default=repr))
        if options != self.options:
            return f"options {self.options} there, {options} here"
        if _sha256(task.W.detach().cpu().contiguous()) != problem["W_sha256"]:
            return "its dense weight W differs (another model or checkpoint)"
        if _sha256(task.moments.H.detach().cpu().contiguous()) != problem["H_sha256"]:
            return "its statistics H differ (other calibration data or settings)"
        return None


def _solved_fault(folder: Path, solved) -> str | None:
    """What is wrong with a ``solutions.json``, or ``None``: a method, its options, and per
    solution a layer name, a file inside ``folder`` and the solver's seconds."""
    if not isinstance(solved, dict) or not isinstance(solved.get("method"), str) or not (
            isinstance(solved.get("options"), dict)):
        return "must be an object with a method and its options"
    if not isinstance(solved.get("solutions"), list):
        return "'solutions' must be a list"
    for i, entry in enumerate(solved["solutions"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return f"solution {i} must be an object with a layer name"
        where = f"solution {i} ({entry['name']!r})"
        try:
            inside(folder, entry.get("file"), f"{where}: file")
        except ValueError as err:
            return str(err)
        seconds = entry.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                math.isfinite(seconds) and seconds >= 0):
            return f"{where}: seconds must be a number >= 0, got {seconds!r}"
    return None


def check_new_folder(folder: str | os.PathLike) -> Path:
    """``folder`` as a path, if it does not exist or is an empty folder; else a ``ValueError``.

    Example:
        >>> check_new_folder("no-such-folder").name
        'no-such-folder'
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"folder {str(folder)!r} exists and is not an empty folder; give a new "
                         "one")
    return folder


def save_problems(model, calibration: Iterable, folder: str | os.PathLike,
                  config: PruneConfig | None = None, **settings) -> dict:
    """Write every target's layer problem into ``folder`` (see the module docstring).

    The run is :func:`l0prune.prune` with ``sequential=False`` and a fixed budget, every solve
    replaced by writing its problem; the model is left as it was. The folder is written whole
    or not at all.

    Args:
        model: the model.
        calibration: its calibration batches.
        folder: a folder that does not exist yet (or is empty).
        config: the run's settings (:class:`~l0prune.PruneConfig`: ``sparsity`` or a sized
            ``budget``, ``targets``, ``ignore``, ``device``, ``blockwise``, ...); ``sequential``
            defaults to ``False`` (``True`` is refused).
        **settings: fields of :class:`~l0prune.PruneConfig` in place of ``config``'s.

    Returns:
        The index written (``index["problems"]``: one entry per target).

    Example:
        >>> index = save_problems(model, data, "problems/", sparsity=0.5)   # doctest: +SKIP
    """
    from l0prune import pruning

    folder = check_new_folder(folder)
    if config is None:
        settings.setdefault("sequential", False)
    config = configured(config, settings, "save_problems")
    for name in ("alpha", "finetune", "checkpoint"):
        if getattr(config, name) is not None:
            raise ValueError(f"save_problems takes no {name}= (it writes the problems of a "
                             "run at a fixed budget, solving none)")
    pruning.check_inputs(model, calibration, None, None, config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        writer = ProblemWriter(staging)
        pruning.run(model, calibration, config, validation=None, loss_fn=None, solves=writer)
        index = writer.finish()
        if folder.exists():
            folder.rmdir()
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return index


def load_problem(folder: str | os.PathLike, problem: Mapping) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """``(W, H)`` of one index entry, their digests checked.

    Raises:
        ValueError: one line when a file is missing, unreadable or not what the index says.
    """
    folder = Path(folder)
    tensors = []
    for key in ("W", "H"):
        path = inside(folder, problem[key], key)
        try:
            tensor = load_file(path)[key]
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: cannot read {key} ({first_line(err)})") from None
        if _sha256(tensor) != problem[f"{key}_sha256"]:
            raise ValueError(f"{path}: {key} is not the one the index names (changed since it "
                             "was written)")
        tensors.append(tensor)
    return tensors[0], tensors[1]


def solve_folder(
    folder: str | os.PathLike,
    method: str = "admm",
    executor=None,
    *,
    options: Mapping | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict]:
    """Solve every problem of ``folder`` and write ``solutions/`` there (replacing one).

    Each problem is solved by :func:`~l0prune.pipeline.solves.solve_target`, the function a direct
    run calls, so the solutions are those of ``l0prune.prune(..., method=method, options=options,
    seed=seed, sequential=False)`` on the same model and data, bit for bit on the CPU with one
    torch thread.

    Args:
        folder: a folder written by :func:`save_problems`.
        method: a :func:`solvers.methods` name.
        executor: ``None`` (here), a :class:`concurrent.futures.Executor` or a
            ``dask.distributed.Client`` (``H`` files shared by several layers go out once).
        options: the method's options.
        seed: the seed of methods that draw random numbers.
        show_progress: a progress bar as the solves finish.

    Returns:
        One row per problem: ``name``, ``shape``, ``kept``, ``total``, ``relative_error``,
        ``seconds``.
    """
    from l0prune.pipeline.executors import layer_solves

    solves = layer_solves(executor)
    index = read_index(folder)
    folder = Path(folder)
    options = options_with_seed(method, options, seed)
    shared: dict[str, torch.Tensor] = {}
    calls, labels = [], []
    for problem in index["problems"]:
        W, H = load_problem(folder, problem)
        H = shared.setdefault(problem["H"], H)
        calls.append((W, H, None, None, [Budget.from_json(problem["budget"])], method, options))
        labels.append(f"layer {problem['name']!r}")
    with progress("solves", "layer", total=len(calls), enabled=show_progress,
                  transient=True) as bar:
        solutions = [found[0] for found in run_tasks(
            solve_target, calls, solves.executor, labels=labels, on_done=lambda i: bar.update())]
    rows = []
    staging = Path(tempfile.mkdtemp(prefix=".solutions.partial-", dir=folder))
    try:
        entries = []
        for i, (problem, solution) in enumerate(zip(index["problems"], solutions, strict=True)):
            name = f"{i:04d}.safetensors"
            save_safetensors({"weight": solution.weight.contiguous(),
                              "mask": solution.mask.contiguous()}, staging / name)
            kept, total = int(solution.mask.sum()), solution.mask.numel()
            entries.append({"name": problem["name"], "file": name, "kept": kept,
                            "total": total, "relative_error": solution.relative_error,
                            "seconds": solution.seconds})
            rows.append({"name": problem["name"], "shape": problem["shape"], "kept": kept,
                         "total": total, "relative_error": solution.relative_error,
                         "seconds": solution.seconds})
        solved = {"method": method, "options": json.loads(json.dumps(options, default=repr)),
                  "solutions": entries}
        with writing(folder / "solutions"):
            (staging / "solutions.json").write_text(json.dumps(solved, indent=1))
            (staging / "table.md").write_text(table(rows, method))
        old = folder / "solutions"
        if old.exists():
            shutil.rmtree(old)
        staging.rename(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return rows


def table(rows: Sequence[Mapping], method: str) -> str:
    """The solutions as a markdown table.

    Example:
        >>> print(table([{"name": "fc", "shape": [1, 2, 4], "kept": 4, "total": 8,
        ...               "relative_error": 0.01, "seconds": 0.5}], "obs").splitlines()[2])
        | fc | 2 x 4 | 4 / 8 | 0.5 | 0.01 | 0.50 |
    """
    lines = [f"| layer ({method}) | weight | kept | sparsity | relative error | seconds |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        shape = " x ".join(map(str, r["shape"][1:])) + (
            f" ({r['shape'][0]} groups)" if r["shape"][0] > 1 else "")
        lines.append(f"| {r['name']} | {shape} | {r['kept']} / {r['total']} | "
                     f"{1 - r['kept'] / r['total']:.4g} | {r['relative_error']:.4g} | "
                     f"{r['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def apply_solutions(model, calibration: Iterable, folder: str | os.PathLike,
                    config: PruneConfig | None = None, *, validation: Iterable | None = None,
                    loss_fn=None, **settings) -> PruneReport:
    """Prune ``model`` with the solutions in ``folder`` (see the module docstring).

    Args:
        model: the model the problems were saved from (dense).
        calibration: the same calibration batches.
        folder: a problem folder solved by :func:`solve_folder`.
        config: the settings of the saving run (:class:`~l0prune.PruneConfig`); without one,
            ``method`` and ``options`` default to those of the solves and ``sequential`` to
            ``False``.
        validation: batches for the losses of the report, as :func:`l0prune.prune` takes them.
        loss_fn: the loss, as :func:`l0prune.prune` takes it.
        **settings: fields of :class:`~l0prune.PruneConfig` in place of ``config``'s.

    Returns:
        The :class:`~l0prune.report.PruneReport`, as a direct run gives it.
    """
    from l0prune import pruning

    solutions = SavedSolutions(folder)
    if config is None:
        settings.setdefault("method", solutions.method)
        settings.setdefault("options", {k: v for k, v in solutions.options.items()
                                        if k != "seed"})
        if "seed" in solutions.options:
            settings.setdefault("seed", solutions.options["seed"])
        settings.setdefault("sequential", False)
    config = configured(config, settings, "apply_solutions")
    pruning.check_inputs(model, calibration, validation, loss_fn, config)
    return pruning.run(model, calibration, config, validation=validation, loss_fn=loss_fn,
                       solves=solutions)
