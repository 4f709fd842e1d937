"""The run configuration: every setting of a prune run in one object, checked once.

:class:`PruneConfig` is at once the keywords of :func:`l0prune.prune` (``prune(model, data,
sparsity=0.5)`` builds one), the command line's flags (``l0prune prune --sparsity 0.5`` builds
the same one), the recipe file (:meth:`PruneConfig.to_toml`, read back by
:meth:`PruneConfig.from_toml`; its keys are the long flags), what a report records
(:meth:`PruneConfig.to_dict`) and, through :meth:`PruneConfig.digest`, what a resumed run must
match. It is frozen and checked when built; nothing downstream parses a field again.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from solvers import NM, Budget, Unstructured, methods, parse_budget

from . import validate
from .io.toml import toml_value
from .pipeline.finetune import Finetune
from .pipeline.solves import options_with_seed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["PruneConfig", "recipe_keys"]

#: The finetuning fields as recipe keys (``finetune-epochs = 3``): a recipe is flat.
_FINETUNE_KEYS = ("epochs", "steps", "lr", "optimizer", "weight_decay", "keep_best")
#: Fields that change where or how a run computes, not what it finds (left out of the digest).
_RUNTIME = ("progress", "threads", "checkpoint", "resume", "rollback_dir")


@dataclass(frozen=True)
class PruneConfig:
    """The settings of a prune run (see the module docstring).

    Give exactly one of ``sparsity`` (a fixed target) or ``alpha`` (the sparsest model whose
    validation loss is at most ``alpha`` times the dense one), or a sized ``budget`` such as
    ``"2:4"`` (a ``sparsity`` that agrees with an N:M budget is accepted).

    Args:
        sparsity: fraction of each target's weights removed, in [0, 1); or a dict of fractions
            by layer name (then the dict's keys are the targets unless ``targets`` is given).
        alpha: loss tolerance, ``>= 1``; the run needs validation batches.
        method: a solver of :func:`solvers.methods` (``"admm"``, ``"iht"``, ``"obs"``,
            ``"wanda"``, ``"magnitude"``, ...).
        budget: the sparsity pattern, as a :class:`~solvers.Budget` or its text:
            ``"unstructured"`` (default), ``"per-row"``, ``"structured"`` (whole input
            features; whole channels on a convolution) or N:M such as ``"2:4"``.
        targets: the layers to prune (one or a list), as llm-compressor takes them: a regex
            matched against the full layer name (``re.fullmatch``), ``"re:"`` and a regex
            matched from the name's start (``re.match``), or a class name (``"Linear"``,
            ``"Conv1D"``); see :class:`~l0prune.model.targets.Selector`. Default: every
            ``Linear`` / ``Conv1d`` / ``Conv2d`` / ``Conv1D`` that runs, except the last to
            run (the output head).
        ignore: layers left dense, in the same forms.
        sequential: prune layer after layer, each fitted to reproduce the dense model's output
            from what it sees with the layers before it pruned; ``False``: every layer's
            statistics from the dense model, in one pass.
        h_block: take block-diagonal statistics, blocks of at most this many input columns
            (whole input channels of a convolution, with all their taps), for every layer wider
            than that, and solve each block on its own at the layer's sparsity: for a layer
            whose full ``H`` does not fit in memory (a run that cannot fit is refused before
            any work, naming a value that fits). ``None``: the full ``H`` of every layer.
        blockwise: prune block by block (``None``: when the model is a stack of repeated
            blocks; ``True``: block by block or an error saying why not; ``False``: the
            whole-model path).
        finetune: masked finetuning after pruning (with ``alpha``: after every trial), a
            :class:`~l0prune.Finetune` or a dict of its fields; ``None``: none.
        seed: seeds finetuning and the solvers that draw random numbers.
        device: where the run computes (default: the model's).
        options: the solver method's own options (see its docstring).
        skip_incompatible: leave dense, with a warning, the targets the budget cannot apply to
            (N:M on an input width not divisible by M) instead of raising.
        checkpoint: a folder where a block-by-block run with a fixed budget writes each
            finished block, so that it can resume.
        resume: take the blocks finished in ``checkpoint`` by an earlier run with the same
            settings and data (bit for bit the result of a run never interrupted).
        rollback_dir: an existing folder where a block-by-block run keeps the rollback copy of
            each finished block on disk instead of in memory.
        threads: torch CPU threads for the run (default: torch's, capped by the CPUs this
            process may use); torch's setting is put back after the run.
        progress: show progress bars.

    Example:
        >>> config = PruneConfig(sparsity=0.5, budget="per-row", method="obs")
        >>> config.budget, PruneConfig.from_toml(config.to_toml()) == config
        (PerRow(sparsity=None, k=None), True)
    """

    sparsity: float | Mapping[str, float] | None = None
    alpha: float | None = None
    method: str = "admm"
    budget: Budget | str | None = None
    targets: str | tuple[str, ...] | None = None
    ignore: str | tuple[str, ...] | None = None
    sequential: bool = True
    h_block: int | None = None
    blockwise: bool | None = None
    finetune: Finetune | Mapping | None = None
    seed: int = 0
    device: str | None = None
    options: Mapping = field(default_factory=dict)
    skip_incompatible: bool = False
    checkpoint: str | None = None
    resume: bool = False
    rollback_dir: str | None = None
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        def put(name: str, value) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.sparsity, Mapping):
            if not self.sparsity:
                raise ValueError("sparsity must not be an empty dict")
            put("sparsity", {str(k): validate.fraction(v, f"sparsity[{k!r}]")
                             for k, v in self.sparsity.items()})
        elif self.sparsity is not None:
            put("sparsity", validate.fraction(self.sparsity, "sparsity"))
        if self.alpha is not None:
            put("alpha", validate.tolerance(self.alpha, "alpha"))
        if self.method not in methods():
            raise ValueError(f"method must be one of {methods()}, got {self.method!r}")
        put("budget", Unstructured() if self.budget is None else parse_budget(self.budget))
        for name in ("targets", "ignore"):
            value = getattr(self, name)
            if value is not None:
                put(name, validate.patterns(value, name))
        for name in ("sequential", "skip_incompatible", "resume", "progress"):
            validate.boolean(getattr(self, name), name)
        validate.optional_boolean(self.blockwise, "blockwise")
        put("finetune", _finetune(self.finetune))
        validate.integer(self.seed, "seed")
        if self.device is not None:
            put("device", _device(self.device))
        if self.options is not None and not isinstance(self.options, Mapping):
            raise ValueError(f"options must be a dict of solver options, got {self.options!r}")
        put("options", dict(self.options or {}))
        for name in ("checkpoint", "rollback_dir"):
            if getattr(self, name) is not None:
                put(name, validate.folder(getattr(self, name), name,
                                          exists=name == "rollback_dir"))
        if self.threads is not None:
            validate.integer(self.threads, "threads", 1)
        if self.h_block is not None:
            validate.integer(self.h_block, "h_block", 1)
        self._check_together()

    def _check_together(self) -> None:
        """The fields against each other (a prune takes one of ``sparsity`` and ``alpha``;
        :func:`l0prune.gradual` takes both: a planned sparsity and a tolerance to go on
        with)."""
        sized = self.budget.sized
        if sized and self.alpha is not None:
            raise ValueError(f"budget={self.budget.text!r} already fixes the sparsity; give it "
                             "without alpha= or give an unsized budget")
        if sized and self.sparsity is not None and not _agrees(self.budget, self.sparsity):
            raise ValueError(
                f"budget={self.budget.text!r} already fixes the sparsity; give it without "
                f"sparsity= (or with the sparsity it fixes) or give an unsized budget "
                "(unstructured, per-row, structured)"
            )
        if self.sparsity is None and self.alpha is None and not sized:
            raise ValueError("give sparsity= (a fraction in [0, 1) or a dict by layer name), "
                             "alpha= (a loss tolerance >= 1, with validation=) or a sized "
                             "budget such as '2:4'")
        if self.resume and self.checkpoint is None:
            raise ValueError("resume=True needs checkpoint= (the folder of the run to resume)")
        if self.checkpoint is not None and self.alpha is not None:
            raise ValueError("checkpoint= works with a fixed budget (sparsity= or a sized "
                             "budget), not alpha= (every trial of the search prunes anew)")
        if self.checkpoint is not None and self.blockwise is False:
            raise ValueError("checkpoint= needs block-by-block pruning; got blockwise=False")

    @property
    def solver_options(self) -> dict:
        """The options the solver gets: :attr:`options`, with :attr:`seed` when the method
        takes one.

        Example:
            >>> PruneConfig(sparsity=0.5, method="hard_concrete", seed=3).solver_options
            {'seed': 3}
        """
        return options_with_seed(self.method, self.options, self.seed)

    @property
    def fixed(self) -> bool:
        """Whether the run prunes once at a fixed budget (not the ``alpha`` search)."""
        return self.alpha is None

    def replace(self, **changes) -> PruneConfig:
        """A copy with ``changes``, checked again.

        Example:
            >>> PruneConfig(sparsity=0.5).replace(method="obs").method
            'obs'
        """
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"PruneConfig has no field(s) {unknown}")
        if ("sparsity" in changes or "alpha" in changes) and not (
            "sparsity" in changes and "alpha" in changes
        ):  # the one given replaces the other
            changes.setdefault("sparsity", None)
            changes.setdefault("alpha", None)
        return replace(self, **changes)

    # --- its forms ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Every field as JSON values: the budget as its text, finetuning as a dict of its
        settings (its ``data``, batches, is not a setting and is left out).

        Example:
            >>> PruneConfig(alpha=1.05, budget="per-row").to_dict()["budget"]
            'per-row'
        """
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["budget"] = self.budget.text
        data["targets"] = None if self.targets is None else list(self.targets)
        data["ignore"] = None if self.ignore is None else list(self.ignore)
        data["finetune"] = None if self.finetune is None else {
            key: getattr(self.finetune, key) for key in _FINETUNE_KEYS}
        data["options"] = json.loads(json.dumps(self.options, default=repr))
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> PruneConfig:
        """The configuration of :meth:`to_dict` (or any dict of its fields).

        Raises:
            ValueError: an unknown key, or a value its field refuses.
        """
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; the settings are "
                             f"{', '.join(f.name for f in fields(cls))}")
        return cls(**data)

    def to_flat(self) -> dict:
        """The settings a recipe holds, keyed by the long flag names (``finetune-epochs``),
        unset ones left out; no ``resume`` (a recipe repeats a run whatever folder state it
        finds) and no ``progress`` (how a run shows itself, not what it does)."""
        data = self.to_dict()
        finetune = data.pop("finetune")
        data.pop("resume")
        data.pop("progress")
        flat = {name.replace("_", "-"): value for name, value in data.items()
                if value is not None and value != {}}
        for key, value in (finetune or {"epochs": 0}).items():
            if value is not None:
                flat[f"finetune-{key.replace('_', '-')}"] = value
        return flat

    @classmethod
    def from_flat(cls, flat: Mapping, where: str = "") -> PruneConfig:
        """The configuration of :meth:`to_flat` keys (``_`` or ``-`` alike); ``finetune-epochs
        = 0`` means no finetuning. ``where`` names the source in errors (``" in recipe.toml"``).
        """
        values: dict[str, object] = {}
        finetune: dict[str, object] = {}
        names = {f.name for f in fields(cls)} - {"finetune"}
        for key, value in flat.items():
            name = key.replace("-", "_")
            if name.startswith("finetune_") and name[len("finetune_"):] in _FINETUNE_KEYS:
                finetune[name[len("finetune_"):]] = value
            elif name in names:
                values[name] = value
            else:
                raise ValueError(f"unknown key {key!r}{where}; the keys are "
                                 f"{', '.join(recipe_keys())}")
        if finetune and finetune.get("epochs") != 0:
            values["finetune"] = finetune
        return cls(**values)

    def to_toml(self) -> str:
        """The recipe: :meth:`to_flat` as TOML.

        Example:
            >>> print(PruneConfig(alpha=1.05).to_toml().splitlines()[0])
            alpha = 1.05
        """
        return "".join(f"{key} = {toml_value(value)}\n" for key, value in self.to_flat().items())

    @classmethod
    def from_toml(cls, text: str, where: str = "") -> PruneConfig:
        """The configuration of a recipe's text (see :meth:`to_toml`).

        Raises:
            ValueError: text that is not TOML, an unknown key, or a value its field refuses.
        """
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"not valid TOML{where} ({err})") from None
        return cls.from_flat(data, where)

    def digest(self) -> str:
        """SHA-256 of every setting the pruned model depends on (not those of
        :data:`_RUNTIME`, which change where or how fast it computes): two runs with the same
        digest, model and data give the same model.

        Example:
            >>> PruneConfig(sparsity=0.5).digest() == PruneConfig(sparsity=0.5, threads=2).digest()
            True
        """
        return hashlib.sha256(json.dumps(self.result_settings(), sort_keys=True)
                              .encode()).hexdigest()

    def result_settings(self) -> dict:
        """What :meth:`digest` hashes: :meth:`to_dict` without the settings that change where
        or how fast a run computes (a resumed run names the first one that differs)."""
        return {k: v for k, v in self.to_dict().items() if k not in _RUNTIME}


def recipe_keys() -> list[str]:
    """The keys a recipe may hold for the configuration (:meth:`PruneConfig.to_flat`)."""
    names = [f.name.replace("_", "-") for f in fields(PruneConfig) if f.name != "finetune"]
    return names + [f"finetune-{key.replace('_', '-')}" for key in _FINETUNE_KEYS]


def _agrees(budget: Budget, sparsity) -> bool:
    """Whether a ``sparsity`` given with a sized budget is the one it fixes (N:M only)."""
    return isinstance(budget, NM) and not isinstance(sparsity, Mapping) and math.isclose(
        sparsity, 1 - budget.n / budget.m, abs_tol=1e-9)


def _finetune(value) -> Finetune | None:
    if value is None or isinstance(value, Finetune):
        return value
    if isinstance(value, Mapping):
        try:
            return Finetune(**value)
        except TypeError as err:
            raise ValueError(f"finetune has an unknown field: {err}") from None
    raise ValueError(f"finetune must be a Finetune, a dict of its fields or None, got "
                     f"{type(value).__name__}")


def _device(value) -> str:
    """A device's name, checked for form (whether it exists here is checked when a run
    starts, on the model's own terms)."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be a torch device or its name, got {value!r}") from None
    if device.type == "meta":
        raise ValueError("device must hold data to compute on, such as 'cpu' or 'cuda'; got "
                         "'meta'")
    return str(device)
