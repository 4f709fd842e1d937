"""The prune recipe: every option of ``l0prune prune``, from flags or a TOML file, checked once.

The options are of two kinds. Those of the run itself (``--sparsity``, ``--method``,
``--budget``, ...) make the :class:`~l0prune.PruneConfig` that :func:`l0prune.prune` takes; the
others say what the command line works on and where it writes (``--model``, ``--calibration``,
``--out``, ...). A recipe file holds both, with the long flag names as keys (``alpha = 1.02``,
``finetune-epochs = 3``; underscores work too). Flags given on the command line override the
file; giving ``--sparsity`` or ``--alpha`` replaces the file's choice between the two. Each run
writes the recipe it ran as ``recipe.toml`` in its output folder
(:meth:`Settings.to_toml`: the configuration's own TOML, then the command line's keys), so
``l0prune prune --config that/recipe.toml`` repeats it.

This module imports neither torch nor a solver: ``l0prune prune --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from l0prune.io.toml import toml_value
from solvers.registry import methods

from .errors import UsageError
from .sources import data_source, is_hf, is_text, model_source
from .values import (
    budget,
    choice,
    existing_folder,
    flag,
    fraction,
    integer,
    nonempty,
    patterns,
    positive,
    reference,
    solver,
    tolerance,
    torch_device,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["DEFAULT_ALPHA", "OPTIONS", "Settings", "add_arguments", "resolve"]

#: The loss tolerance used when neither a sparsity nor a tolerance is given.
DEFAULT_ALPHA = 1.02
#: Finetuning epochs by default, and with ``quick``.
FINETUNE_EPOCHS, QUICK_FINETUNE_EPOCHS = 3, 1


@dataclass(frozen=True)
class Option:
    """One recipe key and its flag ``--name``; ``run`` options are fields of the run's
    :class:`~l0prune.PruneConfig` (or its finetuning), the others the command line's own."""

    name: str
    convert: Callable[[object, str], object]
    help: str
    kind: str = "value"  # "value", "list" (one or more values) or "flag" (--x / --no-x)
    metavar: str | None = None
    run: bool = False

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")


#: Every option of ``l0prune prune``, in the order ``--help`` lists them.
OPTIONS: tuple[Option, ...] = (
    Option("model", model_source, "your model: MODULE:FACTORY returning a trained nn.Module "
           "(MODULE may be a .py file), or hf:NAME_OR_DIR, a Hugging Face hub name or folder; "
           "default: the built-in digits CNN", metavar="MODEL"),
    Option("calibration", data_source, "batches to take layer statistics from (a DataLoader, a "
           "list, or a function returning one), or text for an hf: model: text:PATH (a .txt "
           "file or folder) or hf-dataset:NAME[:CONFIG]:SPLIT; needed with --model",
           metavar="SOURCE"),
    Option("validation", data_source, "batches to measure the loss on, or text as for "
           "--calibration; needed with --model and --alpha (at a fixed sparsity without it the "
           "report gives no loss)", metavar="SOURCE"),
    Option("loss", reference, "loss_fn(outputs, batch) -> scalar; default: cross-entropy "
           "against the batch's last item (an hf: causal LM: the mean next-token loss; an hf: "
           "encoder whose checkpoint has a masked-LM head: the masked-LM loss)",
           metavar="MODULE:NAME"),
    Option("nsamples", integer(1), "text windows: calibration windows drawn at random, at most "
           "this many consecutive validation windows (default: 128)", metavar="N"),
    Option("seqlen", integer(2), "tokens per text window (default: 2048, or the model's maximum "
           "length if shorter)", metavar="N"),
    Option("trust-remote-code", flag, "let an hf: model run code shipped with its checkpoint "
           "(default: off)", kind="flag"),
    Option("revision", nonempty, "an hf: hub model's branch, tag or commit (default: its "
           "main branch)", metavar="REV"),
    Option("dtype", choice("auto", "float32", "float16", "bfloat16"), "the dtype an hf: model "
           "loads in: auto (its checkpoint's), float32, float16 or bfloat16 (default: "
           "transformers')", metavar="DTYPE"),
    Option("save-format", choice("dense", "compressed", "compressed-tensors"), "the model/ "
           "folder of an hf: model: dense (its own save_pretrained; default), compressed "
           "(bitmask / 2:4 layouts, read with l0prune.load_pretrained) or compressed-tensors "
           "(compressed-tensors 0.13's sparse-bitmask / sparse-24-bitmask)", metavar="FORMAT"),
    Option("method", solver(), f"layer solver: {', '.join(methods())} (default: admm)",
           metavar="NAME", run=True),
    Option("baseline", solver("none"), "solver compared against under the same "
           "settings, or none (default: magnitude)", metavar="NAME"),
    Option("sparsity", fraction, "fraction of each target's weights removed, in [0, 1)",
           metavar="S", run=True),
    Option("alpha", tolerance, "loss tolerance: the sparsest model with loss <= alpha x "
           f"dense (default: {DEFAULT_ALPHA} when no --sparsity is given)", metavar="A",
           run=True),
    Option("budget", budget, "sparsity pattern: unstructured, per-row, structured (whole "
           "input channels) or N:M such as 2:4 (default: unstructured)", metavar="B", run=True),
    Option("targets", patterns, "the layers to prune, each a regex of the full name, 're:' "
           "and a regex matched from the name's start, or a class name such as Linear or Conv1D "
           "(default: every Linear / Conv that runs except the last)", kind="list",
           metavar="PATTERN", run=True),
    Option("ignore", patterns, "layers left dense, given as --targets", kind="list",
           metavar="PATTERN", run=True),
    Option("skip-incompatible", flag, "leave dense, with a warning, the layers the budget "
           "cannot apply to (N:M on an input width not divisible by M) instead of stopping",
           kind="flag", run=True),
    Option("gradual", integer(1), "prune in STEPS steps of Zhu & Gupta's cubic schedule to "
           "--sparsity (with --alpha: on towards 0.99 while within it), each a layerwise solve "
           "from the current weights followed by --finetune-epochs of masked finetuning "
           "(l0prune.gradual); default: one-shot", metavar="STEPS"),
    Option("sequential", flag, "take each layer's statistics with the layers before it "
           "already pruned (default); --no-sequential: all from the dense model", kind="flag",
           run=True),
    Option("h-block", integer(1), "block-diagonal statistics for layers wider than N input "
           "columns: blocks of at most N (whole channels of a convolution), each solved on its "
           "own at the layer's sparsity; for a layer whose full H does not fit in memory "
           "(default: the full H)", metavar="N", run=True),
    Option("blockwise", flag, "prune a model built as a stack of repeated blocks (a "
           "transformer) block by block: one calibration pass, one block at a time on the "
           "device (default when such a stack is found); --no-blockwise: the whole-model path",
           kind="flag", run=True),
    Option("resume", flag, "continue a block-by-block run with a fixed budget that stopped: "
           "the finished blocks are kept in OUT.partial/ until the output folder is written; "
           "refused with one line when the settings or data differ", kind="flag"),
    Option("rollback-dir", existing_folder, "block by block: keep the copy of each finished "
           "block that undoes a failed run as files in the existing folder DIR (removed when "
           "the run ends) instead of in memory", metavar="DIR", run=True),
    Option("finetune-epochs", integer(0), "masked finetuning epochs after pruning and after "
           "every search trial, on the training split (built-in model) or the calibration "
           f"batches (--model); 0: none (default: {FINETUNE_EPOCHS}, {QUICK_FINETUNE_EPOCHS} "
           "with --quick, 0 for an hf: model)", metavar="N", run=True),
    Option("finetune-lr", positive, "finetuning learning rate (default: 0.001)", metavar="LR",
           run=True),
    Option("finetune-optimizer", choice("adam", "adamw", "sgd"), "finetuning optimizer: "
           "adam, adamw or sgd (default: adam)", metavar="NAME", run=True),
    Option("seed", integer(0), "seed of training, finetuning and solvers (default: 0)",
           metavar="N", run=True),
    Option("device", torch_device, "where to compute, such as cpu or cuda (default: the model's)",
           metavar="DEVICE", run=True),
    Option("threads", integer(1), "torch CPU threads (default: torch's, capped by the CPUs the "
           "process may use and finds idle; 1 for the built-in model, whose layers are too small "
           "to gain from more)", metavar="N", run=True),
    Option("workers", integer(1), "solve the layers on a local dask cluster of N worker "
           "processes, one thread each, started for the run (pip install 'l0prune[dask]')",
           metavar="N"),
    Option("scheduler", nonempty, "solve the layers on the running dask cluster whose scheduler "
           "is at ADDRESS (tcp://HOST:8786); refused before any work when it cannot be reached",
           metavar="ADDRESS"),
    Option("retries", integer(0), "with --workers: how many times a layer whose worker died is "
           "started again on another before the run fails naming it (default: 3)", metavar="N"),
    Option("save-problems", nonempty, "write every layer's problem (W, H, budget) to the new "
           "folder DIR instead of solving (needs --no-sequential and a fixed budget); solve it "
           "with l0prune solve DIR, apply it with --apply-solutions DIR", metavar="DIR"),
    Option("apply-solutions", nonempty, "prune with the solutions l0prune solve wrote into DIR "
           "(the settings of --save-problems; each solution is checked to be for this model's "
           "problem)", metavar="DIR"),
    Option("quick", flag, "a fast look: the built-in model trains 5 epochs instead of 30 and "
           f"finetuning runs {QUICK_FINETUNE_EPOCHS} epoch", kind="flag"),
    Option("out", nonempty, "output folder (default: l0prune-run); a previous run there is "
           "replaced", metavar="DIR"),
)
_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """A resolved recipe: the run's :class:`~l0prune.PruneConfig` and the command line's own
    options (see :data:`OPTIONS`).

    Attributes:
        config: the run's configuration (its finetuning without data: the task adds it).
    """

    config: object  # a PruneConfig, built once resolve has checked the flags
    model: str | None = None
    calibration: str | None = None
    validation: str | None = None
    loss: str | None = None
    nsamples: int | None = None
    seqlen: int | None = None
    trust_remote_code: bool | None = None
    revision: str | None = None
    dtype: str | None = None
    save_format: str | None = None
    baseline: str = "magnitude"
    gradual: int | None = None
    workers: int | None = None
    scheduler: str | None = None
    retries: int | None = None
    save_problems: str | None = None
    apply_solutions: str | None = None
    resume: bool = False
    quick: bool = False
    out: str = "l0prune-run"

    def cli_values(self) -> dict[str, object]:
        """The command line's own options that are set, keyed by their long flags."""
        values = {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)
                  if f.name != "config"}
        return {name: value for name, value in values.items() if value is not None}

    def as_recipe(self) -> dict[str, object]:
        """Every setting keyed by its long flag (the configuration's, then the command
        line's), unset ones left out, and no ``resume`` (a recipe repeats a run whatever folder
        state it finds).

        Example:
            >>> from l0prune import PruneConfig
            >>> Settings(PruneConfig(alpha=1.05)).as_recipe()["alpha"]
            1.05
        """
        cli = {k: v for k, v in self.cli_values().items() if k != "resume"}
        return {**self.config.to_flat(), **cli}

    def to_toml(self) -> str:
        """The recipe file: :meth:`as_recipe` as TOML, which :func:`resolve` reads back."""
        lines = ["# l0prune prune --config this-file (flags given on the command line win)"]
        lines += [f"{name} = {toml_value(value)}" for name, value in self.as_recipe().items()]
        return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option; a flag not given is absent from the parsed namespace."""
    for option in OPTIONS:
        name = f"--{option.name}"
        if option.kind == "flag":
            parser.add_argument(name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=option.help)
        else:
            parser.add_argument(name, nargs="+" if option.kind == "list" else None,
                                default=argparse.SUPPRESS, metavar=option.metavar,
                                help=option.help)


def _read_recipe(path: str) -> dict[str, object]:
    """The keys of a recipe file by field name, each checked by its option when it has a flag
    (other keys of the run's configuration are checked when it is built)."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path}: is a folder, not a TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"--config {path}: not valid TOML ({err})") from None
    from l0prune.config import recipe_keys

    config_keys = recipe_keys()
    values = {}
    for key, value in data.items():
        name = key.replace("_", "-")
        option = _BY_NAME.get(name)
        if option is not None:
            values[option.field] = option.convert(value, f"{key} in {path}")
        elif name in config_keys:
            values[option_field(name)] = value
        else:
            raise UsageError(
                f"--config {path}: unknown key {key!r}; the keys are the long flags: "
                f"{', '.join(_BY_NAME)}, {', '.join(sorted(set(config_keys) - set(_BY_NAME)))}"
            )
    return values


def option_field(name: str) -> str:
    """A recipe key as a field name (``finetune-epochs`` -> ``finetune_epochs``)."""
    return name.replace("-", "_")


def _check(values: Mapping[str, object]) -> None:
    """The flags against each other, named as the user wrote them."""
    sparsity, alpha = values.get("sparsity"), values.get("alpha")
    if sparsity is not None and alpha is not None:
        raise UsageError(f"give --sparsity or --alpha, not both (got sparsity {sparsity:g}, "
                         f"alpha {alpha:g})")
    nm = values.get("budget") is not None and values["budget"].sized
    if nm and alpha is not None:
        raise UsageError(f"--budget {values['budget'].text} fixes the sparsity: give it "
                         "without --alpha")
    user = ("calibration", "validation", "loss")
    if values.get("model") is None:
        given = [f"--{name}" for name in user if values.get(name) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} needs --model (your model); without it the "
                             "built-in digits CNN runs on its own data")
    else:
        fixed = values.get("alpha") is None and values.get("gradual") is None and (
            values.get("sparsity") is not None or (values.get("budget") is not None
                                                   and values["budget"].sized))
        needed = ("calibration",) if fixed else user[:2]
        missing = [f"--{name}" for name in needed if values.get(name) is None]
        if missing:
            text = " or text:PATH" if is_hf(values.get("model")) else ""
            why = "" if fixed else (" (a loss tolerance is measured on validation data; at a "
                                    "fixed --sparsity it may be left out)")
            raise UsageError(f"--model needs {' and '.join(missing)} (MODULE:NAME of "
                             f"batches{text}){why}")
    _check_hf(values)
    if values.get("gradual") is not None and nm:
        raise UsageError(f"--gradual needs a budget the schedule can size (unstructured, "
                         f"per-row or structured), got --budget {values['budget'].text}")
    if values.get("baseline", "magnitude") == values.get("method", "admm"):
        raise UsageError(
            f"--baseline must differ from --method (both {values.get('method', 'admm')}); use "
            "--baseline none to skip the comparison"
        )


def _check_hf(values: Mapping[str, object]) -> None:
    """Options that only an hf: model or text data take."""
    hf = is_hf(values.get("model"))
    for name in ("calibration", "validation"):
        value = values.get(name)
        if is_text(value) and not hf:
            raise UsageError(f"--{name} {value} needs --model hf:NAME_OR_DIR: text is tokenised "
                             "with the model's tokenizer")
    if not (is_text(values.get("calibration")) or is_text(values.get("validation"))):
        given = [f"--{name}" for name in ("nsamples", "seqlen") if values.get(name) is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to "
                             "text data (text:PATH or hf-dataset:NAME[:CONFIG]:SPLIT), which no "
                             "data flag names")
    if not hf:
        given = [f"--{name.replace('_', '-')}" for name in ("trust_remote_code", "revision",
                                                            "dtype") if values.get(name)]
        if given:
            raise UsageError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to "
                             "--model hf:NAME_OR_DIR only")
    if not hf and values.get("save_format") not in (None, "dense"):
        raise UsageError(f"--save-format {values['save_format']} applies to --model "
                         "hf:NAME_OR_DIR only (other models get model.pt and model.sparse.pt)")


def resolve(given: Mapping[str, object], config: str | None = None) -> Settings:
    """The settings from flags ``given`` (by field name, as parsed) over the recipe ``config``.

    Raises:
        UsageError: naming the flag or recipe key and the value, for any bad input.
    """
    values = _read_recipe(config) if config is not None else {}
    flags = {
        option.field: option.convert(given[option.field], f"--{option.name}")
        for option in OPTIONS if option.field in given
    }
    if "sparsity" in flags or "alpha" in flags:
        values.pop("sparsity", None)
        values.pop("alpha", None)
    values.update(flags)
    _check(values)
    if values.get("sparsity") is None and values.get("alpha") is None and not (
        values.get("budget") is not None and values["budget"].sized
    ):
        values["alpha"] = DEFAULT_ALPHA
    if values.get("resume") and (values.get("alpha") is not None
                                 or values.get("blockwise") is False):
        what = ("--no-blockwise" if values.get("blockwise") is False
                else f"alpha {values['alpha']:g}")
        raise UsageError(
            "--resume continues a block-by-block run with a fixed budget (--sparsity or an N:M "
            f"--budget); got {what}"
        )
    _check_scale_out(values)
    _check_gradual(values)
    if values.get("finetune_epochs") is None:
        values["finetune_epochs"] = 0 if is_hf(values.get("model")) else (
            QUICK_FINETUNE_EPOCHS if values.get("quick") else FINETUNE_EPOCHS
        )
    cli = {f.name for f in fields(Settings)} - {"config"}
    from l0prune.config import PruneConfig  # the run's types: torch, solvers

    try:
        run_config = PruneConfig.from_flat(
            {k.replace("_", "-"): v for k, v in values.items() if k not in cli},
            where=f" in {config}" if config else "")
    except ValueError as err:
        raise UsageError(str(err)) from None
    return Settings(config=run_config, **{k: v for k, v in values.items() if k in cli})


def _check_scale_out(values: Mapping[str, object]) -> None:
    """The cluster and problem-file options, against each other and the run."""
    workers, scheduler = values.get("workers"), values.get("scheduler")
    if workers is not None and scheduler is not None:
        raise UsageError(f"give --workers or --scheduler, not both (got --workers {workers}, "
                         f"--scheduler {scheduler})")
    if values.get("retries") is not None and workers is None:
        raise UsageError("--retries applies to the cluster --workers N starts (a cluster joined "
                         "with --scheduler keeps its own distributed.scheduler.allowed-failures)")
    if values.get("save_problems") is not None and values.get("apply_solutions") is not None:
        raise UsageError("give --save-problems or --apply-solutions, not both")
    for name in ("save_problems", "apply_solutions"):
        if values.get(name) is None:
            continue
        flag_name = "--" + name.replace("_", "-")
        if values.get("sequential", True):
            raise UsageError(
                f"{flag_name} needs --no-sequential: with --sequential each input group's "
                "statistics depend on the solutions of the groups before it, so the problems "
                "cannot be written up front (solve a sequential run on a cluster with --workers "
                "or --scheduler instead)"
            )
        if values.get("alpha") is not None:
            raise UsageError(f"{flag_name} needs a fixed budget (--sparsity S or an N:M "
                             f"--budget), got alpha {values['alpha']:g}")
        if values.get("h_block") is not None:
            raise UsageError(f"{flag_name} writes and reads each layer's whole H; it does not "
                             f"take --h-block (got --h-block {values['h_block']})")
    if values.get("save_problems") is not None and (workers or scheduler):
        raise UsageError("--save-problems solves nothing: give --workers / --scheduler to "
                         "l0prune solve DIR instead")


def _check_gradual(values: Mapping[str, object]) -> None:
    """``--gradual`` prunes in this process, the whole model at every step."""
    if values.get("gradual") is None:
        return
    given = [f"--{name.replace('_', '-')}" for name in
             ("workers", "scheduler", "save_problems", "apply_solutions")
             if values.get(name) is not None]
    given += ["--resume"] if values.get("resume") else []
    given += ["--rollback-dir"] if values.get("rollback_dir") is not None else []
    given += ["--blockwise"] if values.get("blockwise") else []
    if given:
        raise UsageError(f"--gradual {values['gradual']} prunes the whole model in this "
                         f"process at every step; it does not take {', '.join(given)}")
