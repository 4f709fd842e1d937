"""What the three runs (:func:`l0prune.prune`, :func:`l0prune.gradual`,
:func:`l0prune.train_l0`) share besides their :class:`~l0prune.pipeline.session.RunSession`:
their settings as a :class:`~l0prune.PruneConfig`, the checks of the arguments that are not
settings, the run's device, the targets, and a model state held off the run (a passing step
kept while the run goes on).

The prune-retrain workflows train the model, so they validate on held-out data and report every
step as a :class:`~l0prune.report.Trial`; the report is a :class:`~l0prune.report.PruneReport`
like :func:`l0prune.prune`'s, so everything that reads one (tables, JSON, the command line's
plots) reads theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields

import torch
from torch import nn

from l0prune.config import PruneConfig
from l0prune.data.batches import check_data
from l0prune.model.masks import attach, mask_of, masks_of, pack, unpack
from l0prune.model.statistics import discover
from l0prune.model.targets import Target, select_targets

__all__ = ["Kept", "check_inputs", "check_workflow", "configured", "run_device", "sparsity_of",
           "targets_of"]


def configured(config: PruneConfig | None, settings: Mapping, caller: str) -> PruneConfig:
    """``config`` with ``settings`` (keyword arguments of ``caller``) in place of its fields.

    ``mask_structure``, llm-compressor's name for the sparsity pattern, is taken for
    ``budget`` (``"2:4"``; its ``"0:0"`` is ``"unstructured"``).

    Example:
        >>> configured(None, {"sparsity": 0.5}, "prune").sparsity
        0.5
        >>> configured(None, {"sparsity": 0.5, "mask_structure": "2:4"}, "prune").budget.text
        '2:4'
    """
    if config is not None and not isinstance(config, PruneConfig):
        raise ValueError(f"config must be a PruneConfig or None, got {type(config).__name__}")
    if "mask_structure" in settings:
        settings = dict(settings)
        structure = settings.pop("mask_structure")
        if "budget" in settings:
            raise ValueError(f"give budget= or mask_structure= (llm-compressor's name for it), "
                             f"not both (got budget={settings['budget']!r}, mask_structure="
                             f"{structure!r})")
        settings["budget"] = "unstructured" if structure == "0:0" else structure
    try:
        return PruneConfig(**settings) if config is None else config.replace(**settings)
    except TypeError as err:
        raise TypeError(f"{caller}() got an unknown setting ({err}); the settings are the "
                        "fields of l0prune.PruneConfig") from None


def check_inputs(model, data: Iterable, validation, loss_fn, config: PruneConfig,
                 data_name: str = "calibration") -> None:
    """The arguments of a run that are not settings: the model, its data and its loss."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable (outputs, batch) -> scalar, got {loss_fn!r}")
    if config.alpha is not None and validation is None:
        raise ValueError("alpha needs validation= batches to measure the loss on")
    check_data(data, data_name)
    if validation is not None:
        check_data(validation, "validation")


#: Settings of a prune that the prune-retrain workflows do not take (block by block, resume,
#: layers left dense), with their defaults.
_PRUNE_ONLY = ("blockwise", "checkpoint", "resume", "rollback_dir", "skip_incompatible")


def check_workflow(model, train: Iterable, validation, loss_fn, config: PruneConfig,
                   caller: str, *, needs_validation: bool, unused: Sequence[str] = ()) -> None:
    """:func:`check_inputs` for a prune-retrain workflow, which also refuses the settings it
    does not take (set away from their defaults) and, with ``needs_validation``, runs
    without validation data."""
    check_inputs(model, train, validation, loss_fn, config, "train")
    defaults = {f.name: f.default_factory() if f.default is MISSING else f.default
                for f in fields(PruneConfig)}
    given = [name for name in (*_PRUNE_ONLY, *unused)
             if getattr(config, name) != defaults[name]]
    if given:
        raise ValueError(f"{caller} does not take {', '.join(given)} (settings of "
                         "l0prune.prune); leave them out")
    if needs_validation and validation is None:
        raise ValueError("validation= is needed for the loss of every step: give held-out "
                         "batches")


def run_device(model: nn.Module, device) -> torch.device:
    """The run's device: ``device`` if given (it must exist here and hold data), else the
    model's.

    Example:
        >>> run_device(nn.Linear(2, 2), None)
        device(type='cpu')
    """
    if device is None:
        return next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device or its name, got {device!r}") from None
    if device.type == "meta":
        raise ValueError(
            "device must hold data to compute on, such as 'cpu' or 'cuda'; got 'meta'"
        )
    try:  # exists, and takes a CPU tensor's data in place (as model.to needs)
        torch.empty(0).data = torch.empty(0, device=device)
    except Exception as err:  # torch raises AssertionError or RuntimeError by backend
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"device {str(device)!r} is not available here ({first}); give one that is, such "
            f"as 'cpu'"
        ) from None
    return device


def targets_of(model: nn.Module, train: Iterable, config: PruneConfig,
               device: torch.device) -> tuple[list[Target], object]:
    """The layers a workflow prunes (as :func:`l0prune.prune` chooses them) and the model's
    :class:`~l0prune.model.statistics.Discovery`, from one forward pass on a training batch.

    Grouped convolutions are refused: a workflow's masks are per layer.
    """
    discovery = discover(model, next(iter(train)), device)
    chosen = select_targets(model, discovery.order, config.targets, config.ignore)
    grouped = [t.name for t in chosen if t.groups > 1]
    if grouped:
        raise ValueError(f"targets {grouped} are grouped convolutions, which this workflow does "
                         "not prune; leave them out with ignore=")
    return chosen, discovery


def sparsity_of(targets: Sequence[Target]) -> float:
    """Fraction of the targets' weights that are zero under their masks (0 for dense layers).

    Example:
        >>> sparsity_of([Target("l", nn.Linear(2, 2))])
        0.0
    """
    kept = total = 0
    for t in targets:
        mask = mask_of(t.module)
        kept += t.total if mask is None else int(mask.count_nonzero())
        total += t.total
    return 1.0 - kept / total


@dataclass
class Kept:
    """A model state held on the CPU while a run goes on, and what it scored.

    Attributes:
        state: the model's ``state_dict``, copied to the CPU (``None`` when not kept).
        masks: the masks of its pruned layers as bits (:func:`~l0prune.model.masks.pack`), on
            the CPU, by module name (``None`` when not kept).
        sparsity: its sparsity over the targets.
        loss: its validation loss.
        loss_before_finetune: the loss before its last finetuning, if any.
        layers: per-layer figures of the step that made it (name -> (kept, error, seconds)).
    """

    state: dict[str, torch.Tensor] | None
    masks: dict[str, torch.Tensor] | None
    sparsity: float
    loss: float
    loss_before_finetune: float | None
    layers: dict[str, tuple[int, float, float]]

    @classmethod
    def of(cls, model: nn.Module, *, copy: bool = True, **figures) -> Kept:
        """``model``'s figures, and with ``copy`` its state and masks now (a run that never
        goes back to an earlier model keeps only the figures)."""
        if not copy:
            return cls(state=None, masks=None, **figures)
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        kept = {name: pack(mask).cpu() for name, mask in masks_of(model).items()}
        return cls(state=state, masks=kept, **figures)

    def put_back(self, model: nn.Module) -> None:
        """Load the state into ``model`` (the same model, with no masks) and attach the
        masks."""
        model.load_state_dict(self.state)
        for name, bits in self.masks.items():
            module = model.get_submodule(name)
            attach(module, module.weight, unpack(bits, module.weight.shape))
