"""The prune recipe: every option of ``l0prune prune``, from flags or a TOML file, checked once.

A recipe file holds the same keys as the long flags (``alpha = 1.02``, ``finetune-epochs = 3``;
underscores work too). Flags given on the command line override the file; giving ``--sparsity``
or ``--alpha`` replaces the file's choice between the two. Each run writes the recipe it ran as
``recipe.toml`` in its output folder, so ``l0prune prune --config that/recipe.toml`` repeats it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from solvers import methods

from .errors import UsageError
from .sources import data_source, is_hf, is_text, model_source
from .values import (
    choice,
    existing_folder,
    flag,
    fraction,
    integer,
    nonempty,
    parse_budget,
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

__all__ = ["DEFAULT_ALPHA", "OPTIONS", "Settings", "add_arguments", "as_recipe", "resolve",
           "to_toml"]

#: The loss tolerance used when neither a sparsity nor a tolerance is given.
DEFAULT_ALPHA = 1.02
#: Finetuning epochs by default, and with ``quick``.
FINETUNE_EPOCHS, QUICK_FINETUNE_EPOCHS = 3, 1


@dataclass(frozen=True)
class Option:
    """One recipe key and its flag ``--name``."""

    name: str
    convert: Callable[[object, str], object]
    help: str
    kind: str = "value"  # "value", "list" (one or more values) or "flag" (--x / --no-x)
    metavar: str | None = None

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
           "--calibration; needed with --model", metavar="SOURCE"),
    Option("loss", reference, "loss_fn(outputs, batch) -> scalar; default: cross-entropy "
           "against the batch's last item (an hf: causal LM: the mean next-token loss)",
           metavar="MODULE:NAME"),
    Option("nsamples", integer(1), "text windows: calibration windows drawn at random, at most "
           "this many consecutive validation windows (default: 128)", metavar="N"),
    Option("seqlen", integer(2), "tokens per text window (default: 2048, or the model's maximum "
           "length if shorter)", metavar="N"),
    Option("trust-remote-code", flag, "let an hf: model run code shipped with its checkpoint "
           "(default: off)", kind="flag"),
    Option("save-format", choice("dense", "compressed"), "the model/ folder of an hf: model: "
           "dense (its own save_pretrained; default) or compressed (bitmask / 2:4 layouts, read "
           "with l0prune.load_pretrained)", metavar="FORMAT"),
    Option("method", solver(), f"layer solver: {', '.join(methods())} (default: admm)",
           metavar="NAME"),
    Option("baseline", solver("none"), "solver compared against under the same "
           "settings, or none (default: magnitude)", metavar="NAME"),
    Option("sparsity", fraction, "fraction of each target's weights removed, in [0, 1)",
           metavar="S"),
    Option("alpha", tolerance, "loss tolerance: the sparsest model with loss <= alpha x "
           f"dense (default: {DEFAULT_ALPHA} when no --sparsity is given)", metavar="A"),
    Option("budget", parse_budget, "sparsity pattern: unstructured, per-row, structured (whole "
           "input channels) or N:M such as 2:4 (default: unstructured)", metavar="B"),
    Option("targets", patterns, "regexes of the layer names to prune (default: every Linear / "
           "Conv that runs except the last)", kind="list", metavar="REGEX"),
    Option("ignore", patterns, "regexes of layer names left dense", kind="list",
           metavar="REGEX"),
    Option("skip-incompatible", flag, "leave dense, with a warning, the layers the budget "
           "cannot apply to (N:M on an input width not divisible by M) instead of stopping",
           kind="flag"),
    Option("gradual", integer(1), "prune in STEPS steps of Zhu & Gupta's cubic schedule to "
           "--sparsity (with --alpha: on towards 0.99 while within it), each a layerwise solve "
           "from the current weights followed by --finetune-epochs of masked finetuning "
           "(l0prune.gradual); default: one-shot", metavar="STEPS"),
    Option("sequential", flag, "take each layer's statistics with the layers before it "
           "already pruned (default); --no-sequential: all from the dense model", kind="flag"),
    Option("blockwise", flag, "prune a model built as a stack of repeated blocks (a "
           "transformer) block by block: one calibration pass, one block at a time on the "
           "device (default when such a stack is found); --no-blockwise: the whole-model path",
           kind="flag"),
    Option("resume", flag, "continue a block-by-block run with a fixed budget that stopped: "
           "the finished blocks are kept in OUT.partial/ until the output folder is written; "
           "refused with one line when the settings or data differ", kind="flag"),
    Option("rollback-dir", existing_folder, "block by block: keep the copy of each finished "
           "block that undoes a failed run as files in the existing folder DIR (removed when "
           "the run ends) instead of in memory", metavar="DIR"),
    Option("finetune-epochs", integer(0), "masked finetuning epochs after pruning and after "
           "every search trial, on the training split (built-in model) or the calibration "
           f"batches (--model); 0: none (default: {FINETUNE_EPOCHS}, {QUICK_FINETUNE_EPOCHS} "
           "with --quick, 0 for an hf: model)", metavar="N"),
    Option("finetune-lr", positive, "finetuning learning rate (default: 0.001)", metavar="LR"),
    Option("finetune-optimizer", choice("adam", "adamw", "sgd"), "finetuning optimizer: "
           "adam, adamw or sgd (default: adam)", metavar="NAME"),
    Option("seed", integer(0), "seed of training, finetuning and solvers (default: 0)",
           metavar="N"),
    Option("device", torch_device, "where to compute, such as cpu or cuda (default: the model's)",
           metavar="DEVICE"),
    Option("threads", integer(1), "torch CPU threads (default: torch's, capped by the CPUs the "
           "process may use and finds idle; 1 for the built-in model, whose layers are too small "
           "to gain from more)", metavar="N"),
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


@dataclass
class Settings:
    """A resolved recipe: every option's value (see :data:`OPTIONS`)."""

    model: str | None = None
    calibration: str | None = None
    validation: str | None = None
    loss: str | None = None
    nsamples: int | None = None
    seqlen: int | None = None
    trust_remote_code: bool | None = None
    save_format: str | None = None
    method: str = "admm"
    baseline: str = "magnitude"
    sparsity: float | None = None
    alpha: float | None = None
    budget: str = "unstructured"
    targets: list[str] | None = None
    ignore: list[str] | None = None
    skip_incompatible: bool = False
    gradual: int | None = None
    sequential: bool = True
    blockwise: bool | None = None
    resume: bool = False
    rollback_dir: str | None = None
    finetune_epochs: int | None = None
    finetune_lr: float = 1e-3
    finetune_optimizer: str = "adam"
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    workers: int | None = None
    scheduler: str | None = None
    retries: int | None = None
    save_problems: str | None = None
    apply_solutions: str | None = None
    quick: bool = False
    out: str = "l0prune-run"


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
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path}: is a folder, not a TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"--config {path}: not valid TOML ({err})") from None
    values = {}
    for key, value in data.items():
        option = _BY_NAME.get(key.replace("_", "-"))
        if option is None:
            raise UsageError(
                f"--config {path}: unknown key {key!r}; the keys are the long flags: "
                f"{', '.join(_BY_NAME)}"
            )
        values[option.field] = option.convert(value, f"{key} in {path}")
    return values


def _check(settings: Settings) -> None:
    if settings.sparsity is not None and settings.alpha is not None:
        raise UsageError(
            f"give --sparsity or --alpha, not both (got sparsity {settings.sparsity:g}, "
            f"alpha {settings.alpha:g})"
        )
    if ":" in settings.budget and (settings.sparsity is not None or settings.alpha is not None):
        raise UsageError(
            f"--budget {settings.budget} fixes the sparsity: give it without --sparsity or "
            "--alpha"
        )
    user = ("calibration", "validation", "loss")
    if settings.model is None:
        given = [f"--{name}" for name in user if getattr(settings, name) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} needs --model (your model); without it the "
                             "built-in digits CNN runs on its own data")
    else:
        missing = [f"--{name}" for name in user[:2] if getattr(settings, name) is None]
        if missing:
            raise UsageError(f"--model needs {' and '.join(missing)} (MODULE:NAME of batches)")
    _check_hf(settings)
    if settings.gradual is not None and ":" in settings.budget:
        raise UsageError(f"--gradual needs a budget the schedule can size (unstructured, "
                         f"per-row or structured), got --budget {settings.budget}")
    if settings.baseline == settings.method:
        raise UsageError(
            f"--baseline must differ from --method (both {settings.method}); use --baseline none "
            "to skip the comparison"
        )


def _check_hf(settings: Settings) -> None:
    """Options that only an hf: model or text data take."""
    hf = is_hf(settings.model)
    for name in ("calibration", "validation"):
        value = getattr(settings, name)
        if is_text(value) and not hf:
            raise UsageError(f"--{name} {value} needs --model hf:NAME_OR_DIR: text is tokenised "
                             "with the model's tokenizer")
    if not (is_text(settings.calibration) or is_text(settings.validation)):
        given = [f"--{name}" for name in ("nsamples", "seqlen")
                 if getattr(settings, name) is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to "
                             "text data (text:PATH or hf-dataset:NAME[:CONFIG]:SPLIT), which no "
                             "data flag names")
    if not hf and settings.trust_remote_code:
        raise UsageError("--trust-remote-code applies to --model hf:NAME_OR_DIR only")
    if not hf and settings.save_format == "compressed":
        raise UsageError("--save-format compressed applies to --model hf:NAME_OR_DIR only (other "
                         "models get model.pt and model.sparse.pt)")


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
    settings = Settings(**values)
    _check(settings)
    if settings.sparsity is None and settings.alpha is None and ":" not in settings.budget:
        settings.alpha = DEFAULT_ALPHA
    if settings.resume and (settings.alpha is not None or settings.blockwise is False):
        given = "--no-blockwise" if settings.blockwise is False else f"alpha {settings.alpha:g}"
        raise UsageError(
            "--resume continues a block-by-block run with a fixed budget (--sparsity or an N:M "
            f"--budget); got {given}"
        )
    _check_scale_out(settings)
    _check_gradual(settings)
    if settings.finetune_epochs is None:
        settings.finetune_epochs = 0 if is_hf(settings.model) else (
            QUICK_FINETUNE_EPOCHS if settings.quick else FINETUNE_EPOCHS
        )
    return settings


def _check_scale_out(settings: Settings) -> None:
    """The cluster and problem-file options, against each other and the run."""
    if settings.workers is not None and settings.scheduler is not None:
        raise UsageError(f"give --workers or --scheduler, not both (got --workers "
                         f"{settings.workers}, --scheduler {settings.scheduler})")
    if settings.retries is not None and settings.workers is None:
        raise UsageError("--retries applies to the cluster --workers N starts (a cluster joined "
                         "with --scheduler keeps its own distributed.scheduler.allowed-failures)")
    if settings.save_problems is not None and settings.apply_solutions is not None:
        raise UsageError("give --save-problems or --apply-solutions, not both")
    for name in ("save_problems", "apply_solutions"):
        folder = getattr(settings, name)
        if folder is None:
            continue
        flag_name = "--" + name.replace("_", "-")
        if settings.sequential:
            raise UsageError(
                f"{flag_name} needs --no-sequential: with --sequential each input group's "
                "statistics depend on the solutions of the groups before it, so the problems "
                "cannot be written up front (solve a sequential run on a cluster with --workers "
                "or --scheduler instead)"
            )
        if settings.alpha is not None:
            raise UsageError(f"{flag_name} needs a fixed budget (--sparsity S or an N:M "
                             f"--budget), got alpha {settings.alpha:g}")
    if settings.save_problems is not None and (settings.workers or settings.scheduler):
        raise UsageError("--save-problems solves nothing: give --workers / --scheduler to "
                         "l0prune solve DIR instead")


def _check_gradual(settings: Settings) -> None:
    """``--gradual`` prunes in this process, the whole model at every step."""
    if settings.gradual is None:
        return
    given = [f"--{name.replace('_', '-')}" for name in
             ("workers", "scheduler", "save_problems", "apply_solutions")
             if getattr(settings, name) is not None]
    given += ["--resume"] if settings.resume else []
    given += ["--rollback-dir"] if settings.rollback_dir is not None else []
    given += ["--blockwise"] if settings.blockwise else []
    if given:
        raise UsageError(f"--gradual {settings.gradual} prunes the whole model in this process "
                         f"at every step; it does not take {', '.join(given)}")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def as_recipe(settings: Settings) -> dict[str, object]:
    """``settings`` keyed by the long flag names, unset options left out (and ``resume``: a
    recipe repeats a run, whatever folder state it finds).

    Example:
        >>> as_recipe(Settings(alpha=1.05))["alpha"]
        1.05
    """
    values = {option.name: getattr(settings, option.field) for option in OPTIONS}
    return {name: value for name, value in values.items()
            if value is not None and name != "resume"}


def to_toml(settings: Settings) -> str:
    """``settings`` as a recipe file (see :func:`as_recipe`).

    Example:
        >>> print(to_toml(Settings(alpha=1.05, targets=["0"])).splitlines()[3])
        alpha = 1.05
    """
    lines = ["# l0prune prune --config this-file (flags given on the command line win)"]
    lines += [f"{name} = {_toml_value(value)}" for name, value in as_recipe(settings).items()]
    return "\n".join(lines) + "\n"
