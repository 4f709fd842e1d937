"""Whole-model L0 training: hard-concrete gates trained with the weights, then exact masks.

Every weight of the targets (or every input column group, with a structured budget: a layer's
input feature, a convolution's input channel) gets a hard-concrete gate ``z`` with a learned
location ``log_alpha`` (Louizos, Welling & Kingma 2018; the gate math is :mod:`solvers.gates`).
The network computes with ``W * z`` (one draw per step while training), and the weights and the
gates are trained together on the task loss under a constraint on the expected L0 count:

    min_{W, log_alpha}  E[task loss]   s.t.   d(log_alpha) = sum_g P(z_g != 0) n_g / n = d_t,

``d`` the expected fraction of weights kept (``n_g`` weights under gate ``g``, ``n`` in all
targets) and ``d_t = 1 - s_t`` the target, which falls along the cubic schedule of
:mod:`l0prune.pipeline.schedules` over the first ``warmup`` of the steps and then stays at the
requested ``1 - s``. The constraint is enforced by a multiplier ``mu`` on the expected count, as in
Wang, Wohlwend & Lei 2020; they learn theirs by gradient ascent over tens of thousands of steps.
Within the few hundred steps of a finetuning budget that ascent oscillated here (a 90 % target ended
at 94-96 %, a 98 % one at 95 %), so the multiplier is solved for at every step instead: after the
Adam step ``log_alpha'`` on the task loss,

    log_alpha <- log_alpha' - mu grad d(log_alpha'),   mu such that d(log_alpha) = d_t

(a linearised projection onto the constraint, repeated from where it lands; ``d`` falls
monotonically in ``mu``, so ``mu`` is found by bisection on the device, without a host
synchronisation). Gates far from their threshold (``P(z != 0)`` near 0 or 1) barely move, so
the gates stay polarised; a uniform shift of every ``log_alpha`` instead trained models with
several times the loss. The task gradient orders the gates, the multiplier sets how many are
open, and so how the budget spreads over the layers; the expected sparsity meets the target at
every step. A gate starts at ``2.5 + log(|w| / rms)`` clipped to ``[0, 5]`` (``rms`` over its
layer; a group's norm for a structured gate): in the order of the weights' magnitude, a weight
of typical size open (a deterministic gate of 1 needs ``log_alpha >= 2.4``), the smallest half
closed (``log_alpha = 0`` gives 0.5). Starting every gate at the same value instead left the
gates unsorted after a few hundred steps and trained models with several times the loss.

At the end the deterministic gates ``clamp(sigmoid(log_alpha)(zeta - gamma) + gamma, 0, 1)``
are projected to the exact budget: the ``k = round((1 - s) n)`` weights with the largest
``log_alpha`` (whole groups in score order for a structured budget, at most ``k`` weights and
at least one group per layer). The kept weights take the gate values they were trained with
(``W z``; a kept weight whose gate closed enters at ``W``), the pruned weights are written in
place with the masks kept beside them (:mod:`l0prune.model.masks`), and the model is finetuned
with them fixed.

With ``alpha`` the target falls on the cubic schedule towards
:data:`~l0prune.pipeline.search.MAX_SPARSITY` over all the epochs; at 20 points evenly spaced over
the steps the model projected to the current target is validated, the run stops after three
projections in a row over ``alpha L(W)``, and the sparsest passing projection is the one
finetuned and returned.

The model is never changed until the masks are written: the gated weights reach the forward
pass through :func:`torch.func.functional_call`. Any exception puts the model back exactly as
it was (:class:`~l0prune.model.snapshot.Snapshot`).

References:
    Louizos, Welling, Kingma. "Learning Sparse Neural Networks through L0 Regularization."
    ICLR 2018.
    Wang, Wohlwend, Lei. "Structured Pruning of Large Language Models." EMNLP 2020, section 3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from l0prune import validate
from l0prune.config import PruneConfig
from l0prune.data.batches import LossFn, cross_entropy, forward, mean_loss
from l0prune.data.hf_datasets import batches_of
from l0prune.model.input_check import explained
from l0prune.model.masks import attach
from l0prune.model.targets import Target
from l0prune.report import LayerReport, PruneReport, Trial
from solvers import Budget, Structured, Unstructured
from solvers import gates as hard_concrete
from solvers.budgets import top_k_mask

from .finetune import Finetune, masked_finetune
from .progress import progress as progress_bar
from .schedules import scheduled_sparsity
from .search import MAX_SPARSITY
from .session import RunSession
from .workflow import check_workflow, configured, targets_of

__all__ = ["L0Report", "train_l0"]

#: Initial gate location: every gate open with probability about 0.99.
_LOG_ALPHA0 = 2.5
#: Bisection steps of the multiplier, and its bracket in units of ``log_alpha``.
_BISECTION_STEPS, _MU_RANGE = 30, 20.0
#: Linearised projections per step: one suffices while the target moves slowly.
_ROUNDS = 2
#: With ``alpha``, the projections validated over the run (evenly spaced in steps), and the
#: failures in a row that end it (a projection's loss is noisy: the gates are still moving).
_ALPHA_CHECKPOINTS, _ALPHA_PATIENCE = 20, 3


@dataclass
class L0Report(PruneReport):
    """A :class:`~l0prune.report.PruneReport` with what the L0 training reached before the
    projection to the exact budget.

    Attributes:
        expected_sparsity: ``1 - d`` at the end of training, ``d`` the expected fraction of
            weights kept (what the controller drives to the target).
        gate_sparsity: fraction of the targets' weights whose deterministic gate is 0.
        multiplier: the last step's multiplier ``mu`` (in ``log_alpha`` units).
        epochs: training epochs run (fewer than asked when ``alpha`` stopped the run).
    """

    expected_sparsity: float | None = None
    gate_sparsity: float | None = None
    multiplier: float | None = None
    epochs: int = 0


def train_l0(
    model: nn.Module,
    train: Iterable,
    config: PruneConfig | None = None,
    *,
    validation: Iterable | None = None,
    loss_fn: LossFn | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    gate_lr: float = 0.1,
    warmup: float = 0.5,
    **settings,
) -> L0Report:
    """Train ``model`` with hard-concrete gates on its targets to a sparsity, then prune it.

    Args:
        model: a trained torch model, not pruned yet (changed in place).
        train: re-iterable training batches (and finetuning's, unless ``finetune.data``).
        config: the settings (:class:`~l0prune.PruneConfig`) shared with :func:`l0prune.prune`:
            ``sparsity`` the fraction of the targets' weights removed, or ``alpha`` the loss
            tolerance instead (the sparsest projection within ``alpha L(W)`` on
            ``validation``; see the module docstring); ``budget`` ``"unstructured"`` (a gate
            per weight) or ``"structured"`` (a gate per input feature group; whole input
            channels on a convolution), unsized; ``finetune`` after the projection;
            ``targets``, ``ignore``, ``seed`` (the gate draws, training's shuffling and
            finetuning), ``device``, ``threads`` and ``progress`` (over the epochs). It takes
            no ``method``, ``options`` or ``sequential``: no layer problem is solved.
        validation: held-out batches; needed with ``alpha``; with them every epoch is reported.
        loss_fn: ``loss_fn(outputs, batch) -> scalar`` (default: cross-entropy).
        epochs: passes over ``train`` with the gates.
        lr: Adam learning rate of the model's parameters.
        gate_lr: Adam learning rate of the gates' ``log_alpha``.
        warmup: fraction of the steps over which the target sparsity falls to ``sparsity``.
        **settings: fields of :class:`~l0prune.PruneConfig` in place of ``config``'s.

    Returns:
        An :class:`L0Report`: the layers as pruned, the losses, the trials (stage ``"l0"``:
        the model projected to the target of the moment, validated; one per epoch, or 20 over
        the run with ``alpha``) and what the controller reached before the projection.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import l0prune
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> data = [(torch.randn(64, 8), torch.randint(0, 2, (64,)))]
        >>> report = l0prune.train_l0(model, data, sparsity=0.5, epochs=50, progress=False)
        >>> report.kept, round(report.expected_sparsity, 2)
        (128, 0.5)
    """
    config = configured(config, settings, "train_l0")
    train, validation = batches_of(train), batches_of(validation)
    check_workflow(model, train, validation, loss_fn, config, "train_l0",
                   needs_validation=False, unused=_UNUSED)
    _check_settings(epochs, lr, gate_lr, warmup, config)
    with RunSession(model, config, (train, validation)) as session:
        chosen, _ = targets_of(model, train, config, session.device)
        run = _L0Run(model, chosen, config.budget, loss_fn=loss_fn or cross_entropy,
                     device=session.device, validation=validation, seed=config.seed)
        run.train(train, config.sparsity, config.alpha, epochs=epochs, lr=lr, gate_lr=gate_lr,
                  warmup=warmup, progress=config.progress)
        report = session.finish(run.finish(config.finetune, train, config), unused=_UNUSED)
        report.perplexity = getattr(loss_fn, "perplexity", False) is True
    return report


#: Settings of a prune that train_l0 does not take: it solves no layer problem.
_UNUSED = ("method", "options", "sequential")


def _check_settings(epochs, lr, gate_lr, warmup, config: PruneConfig) -> None:
    validate.integer(epochs, "epochs", 1)
    validate.positive(lr, "lr")
    validate.positive(gate_lr, "gate_lr")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0 <= warmup <= 1:
        raise ValueError(f"warmup must be a fraction in [0, 1], got {warmup!r}")
    if isinstance(config.sparsity, Mapping):
        raise ValueError("train_l0 takes one sparsity for all targets, not a dict by layer")
    budget = config.budget
    if not isinstance(budget, (Unstructured, Structured)) or budget.sized:
        raise ValueError("budget must be an unsized unstructured or structured budget (the "
                         f"gates are trained to the sparsity asked), got {budget.text!r}")


class _Gates:
    """One target's gates: ``log_alpha`` per weight, or per group of ``width`` input columns."""

    def __init__(self, target: Target, family: Budget, device: torch.device):
        rows, cols = target.shape
        self.target = target
        self.width = family.group * target.kernel if isinstance(family, Structured) else 0
        if self.width and cols % self.width:
            raise ValueError(f"structured group {family.group} does not divide layer "
                             f"{target.name!r}'s {cols // target.kernel} input features")
        self.per_gate = rows * self.width if self.width else 1
        with torch.no_grad():
            size = target.matrix(target.module.weight.detach())[0].abs().float()
            if self.width:
                size = size.square().sum(dim=0).reshape(-1, self.width).sum(dim=1).sqrt()
            rms = size.square().mean().sqrt().clamp_min(1e-12)
            start = _LOG_ALPHA0 + torch.log(size / rms + 1e-12).clamp(-_LOG_ALPHA0, _LOG_ALPHA0)
        self.log_alpha = start.to(device).requires_grad_(True)

    def spread(self, z: torch.Tensor) -> torch.Tensor:
        """Gate values in the layer's ``(rows, cols)`` matrix shape."""
        if not self.width:
            return z
        return z.repeat_interleave(self.width).expand(self.target.shape[0], -1)

    def gated(self, z: torch.Tensor) -> torch.Tensor:
        """The layer's weight times ``z``, in the stored shape (differentiable in both)."""
        weight = self.target.module.weight
        return self.target.unmatrix(self.target.matrix(weight) * self.spread(z))


class _L0Run:
    """The gates of every target, their training, projection and bookkeeping."""

    def __init__(self, model, targets, family, *, loss_fn, device, validation, seed):
        self.model, self.targets, self.family = model, list(targets), family
        self.loss_fn, self.device, self.validation = loss_fn, device, validation
        self.seed = seed
        self.gates = [_Gates(t, family, device) for t in self.targets]
        self.total = sum(t.total for t in self.targets)
        self.trials: list[Trial] = []
        self.validation_passes = 0
        self.dense_loss: float | None = None
        self.multiplier = 0.0
        self.epochs = 0
        self.count: int | None = None  # weights kept by the final projection
        self.initial: dict[str, torch.Tensor] | None = None  # with alpha: the model as given
        self.none_passed = False
        self.best: tuple[float, int, list, dict] | None = None

    def forward_with(self, z: list[torch.Tensor]):
        """A callable running the model with each target's weight times its gates ``z``."""
        weights = {f"{g.target.name}.weight": g.gated(zi) for g, zi in zip(self.gates, z,
                                                                             strict=True)}

        def run(*args, **kwargs):
            return torch.func.functional_call(self.model, weights, args, kwargs)
        return run

    def density(self) -> torch.Tensor:
        """Expected fraction of the targets' weights kept, ``sum_g P(z_g != 0) n_g / n``."""
        return sum(hard_concrete.prob_nonzero(g.log_alpha).sum() * g.per_gate
                   for g in self.gates) / self.total

    def evaluate(self, masks: list[torch.Tensor] | None = None) -> float:
        """Validation loss with the deterministic gates (times ``masks``, if given)."""
        self.validation_passes += 1
        with torch.no_grad():
            z = [hard_concrete.deterministic(g.log_alpha) for g in self.gates]
            if masks is not None:
                z = [torch.where(m, torch.where(zi > 0, zi, 1.0), 0.0) for zi, m in
                     zip(z, masks, strict=True)]
        return mean_loss(self.forward_with(z), self.validation, self.loss_fn, self.device)

    def train(self, data, sparsity, alpha, *, epochs, lr, gate_lr, warmup, progress) -> None:
        if self.validation is not None:
            with explained(self.model, "validation"):
                self.dense_loss = self._plain_loss()
        limit = alpha * self.dense_loss if alpha is not None else math.inf
        if alpha is not None:
            self.initial = {k: v.detach().to("cpu", copy=True)
                            for k, v in self.model.state_dict().items()}
        final = sparsity if sparsity is not None else MAX_SPARSITY
        batches = sum(1 for _ in data)
        steps = epochs * batches
        ramp = max(1, round((warmup if alpha is None else 1.0) * steps))
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=lr)
        gate_optimizer = torch.optim.Adam([g.log_alpha for g in self.gates], lr=gate_lr)
        multiplier = torch.zeros((), device=self.device)
        generator = torch.Generator(self.device).manual_seed(self.seed)
        step, stopped, failures = 0, False, 0
        every = max(1, round(steps / _ALPHA_CHECKPOINTS)) if alpha is not None else None
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), progress_bar(
                "L0 training", "epoch", total=epochs, enabled=progress) as bar:
            torch.manual_seed(self.seed)
            for epoch in range(1, epochs + 1):
                if stopped:
                    break
                self.model.train()
                for batch in data:
                    step += 1
                    target = 1.0 - scheduled_sparsity(min(step, ramp), ramp, 0.0, final)
                    z = [hard_concrete.sample(g.log_alpha, generator) for g in self.gates]
                    task = self.loss_fn(forward(self.forward_with(z), batch, self.device), batch)
                    if not bool(torch.isfinite(task.detach()).all()):
                        raise ValueError(f"L0 training diverged: the loss is "
                                         f"{float(task.detach())} at step {step}; lower lr")
                    for opt in (optimizer, gate_optimizer):
                        opt.zero_grad(set_to_none=True)
                    task.backward()
                    for opt in (optimizer, gate_optimizer):
                        opt.step()
                    multiplier = self.constrain(target)
                    if every is not None and step % every == 0:
                        self.model.eval()
                        failures = 0 if self._validate(1.0 - target, limit) else failures + 1
                        self.model.train()
                        stopped = failures == _ALPHA_PATIENCE
                        if stopped:
                            break
                self.model.eval()
                self.epochs = epoch
                self.multiplier = float(multiplier)
                if every is None:
                    self._validate(1.0 - target, limit)
                with torch.no_grad():
                    bar.set_postfix(sparsity=f"{1 - float(self.density()):.3f}")
                bar.update()
        for opt in (optimizer, gate_optimizer):
            opt.zero_grad(set_to_none=True)
        self._settle(alpha, final)

    @torch.no_grad()
    def constrain(self, target: float) -> torch.Tensor:
        """Move the gates onto ``d = target`` along ``grad d`` (re-linearised
        :data:`_ROUNDS` times); returns the multiplier ``mu`` of the last round."""
        for _ in range(_ROUNDS):
            mu = self._project(target)
        return mu

    def _project(self, target: float) -> torch.Tensor:
        slopes = []
        for g in self.gates:
            p = hard_concrete.prob_nonzero(g.log_alpha)
            slopes.append(p * (1 - p))
        top = torch.stack([s.max() for s in slopes]).max().clamp_min(1e-12)
        slopes = [s / top for s in slopes]

        def density(mu: torch.Tensor) -> torch.Tensor:
            return sum((hard_concrete.prob_nonzero(g.log_alpha - mu * s) * g.per_gate).sum()
                       for g, s in zip(self.gates, slopes, strict=True)) / self.total

        lo = torch.full((), -_MU_RANGE, device=self.device)
        hi = torch.full((), _MU_RANGE, device=self.device)
        for _ in range(_BISECTION_STEPS):  # density falls as mu rises
            mid = (lo + hi) / 2
            dense = density(mid) > target
            lo, hi = torch.where(dense, mid, lo), torch.where(dense, hi, mid)
        mu = (lo + hi) / 2
        for g, s in zip(self.gates, slopes, strict=True):
            g.log_alpha.sub_(mu * s)
        return mu

    def _validate(self, target: float, limit: float) -> bool:
        """Validate the projection to ``target``; record it; keep it if it is the best."""
        if self.validation is None:
            return True
        count = int(round((1.0 - target) * self.total))
        masks = self.project(count)
        loss = self.evaluate(masks)
        reached = 1.0 - sum(int(m.sum()) * g.per_gate for g, m in
                            zip(self.gates, self._gate_masks(masks), strict=True)) / self.total
        met = loss <= limit
        self.trials.append(Trial("l0", target, reached, loss, None, met))
        if met and (self.best is None or count < self.best[1]):
            self.best = (loss, count, [g.log_alpha.detach().clone() for g in self.gates],
                         {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return met

    def _settle(self, alpha, final) -> None:
        """The count the final projection keeps: the best passing one with ``alpha``."""
        if alpha is None:
            self.count = int(round((1.0 - final) * self.total))
        elif self.best is None:  # nothing passed: the model as given
            self.count, self.none_passed = self.total, True
            self.model.load_state_dict(self.initial)
        else:
            _, self.count, log_alphas, state = self.best
            with torch.no_grad():
                for g, la in zip(self.gates, log_alphas, strict=True):
                    g.log_alpha.copy_(la)
            self.model.load_state_dict(state)

    def _gate_masks(self, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-gate masks from matrix-shaped ones (the first row of a structured layer)."""
        return [m[0].reshape(-1, g.width)[:, 0] if g.width else m
                for g, m in zip(self.gates, masks, strict=True)]

    def project(self, count: int) -> list[torch.Tensor]:
        """Matrix-shaped masks keeping at most ``count`` weights, by ``log_alpha``.

        Unstructured: exactly the ``count`` largest ``log_alpha`` over all targets (ties to the
        lower index). Structured: whole groups in decreasing ``log_alpha`` while the weights
        kept stay within ``count``, each layer keeping at least its best group.
        """
        with torch.no_grad():
            if not isinstance(self.family, Structured):
                flat = torch.cat([g.log_alpha.reshape(-1) for g in self.gates])
                keep = top_k_mask(flat.reshape(1, -1), count).reshape(-1)
                return [part.reshape(g.log_alpha.shape) for g, part in
                        zip(self.gates, keep.split([g.log_alpha.numel() for g in self.gates]),
                            strict=True)]
            return self._project_groups(count)

    def _project_groups(self, count: int) -> list[torch.Tensor]:
        chosen = [torch.zeros_like(g.log_alpha, dtype=torch.bool) for g in self.gates]
        used = 0
        for i, g in enumerate(self.gates):  # one group per layer first: no layer removed
            chosen[i][int(torch.argmax(g.log_alpha))] = True
            used += g.per_gate
        order = sorted(((float(la), i, j) for i, g in enumerate(self.gates)
                        for j, la in enumerate(g.log_alpha.tolist())),
                       key=lambda item: (-item[0], item[1], item[2]))
        for _, i, j in order:
            if not chosen[i][j] and used + self.gates[i].per_gate <= count:
                chosen[i][j] = True
                used += self.gates[i].per_gate
        return [g.spread(c) for g, c in zip(self.gates, chosen, strict=True)]

    def finish(self, finetune: Finetune | None, data, config: PruneConfig) -> L0Report:
        """Project, write the masks, finetune and report (with ``alpha`` and no passing
        projection: the model as given, every weight kept, not finetuned)."""
        with torch.no_grad():
            expected = 1.0 - float(self.density())
            z = [hard_concrete.deterministic(g.log_alpha) for g in self.gates]
        closed = sum(int((zi == 0).sum()) * g.per_gate for g, zi in zip(self.gates, z,
                                                                         strict=True))
        if self.none_passed:
            z = [torch.ones_like(zi) for zi in z]
            finetune = None
        masks = self.project(self.count)
        layers = []
        for g, zi, mask in zip(self.gates, z, masks, strict=True):
            t = g.target
            with torch.no_grad():
                weight = g.gated(torch.where(zi > 0, zi, 1.0)).detach()
            stored_mask = t.unmatrix(mask.unsqueeze(0))
            attach(t.module, weight, stored_mask)
            layers.append(LayerReport(t.name, list(t.out_in_shape), int(mask.sum()), t.total,
                                      math.nan, 0.0))  # no layer problem: no output error
        steps, before, loss = 0, None, None
        validate = self._plain_loss if self.validation is not None else None
        if self.none_passed:
            loss = self.dense_loss
        elif finetune is not None:
            done = masked_finetune(self.model, finetune, self.loss_fn, self.device, data=data,
                                   validate=validate, seed=self.seed)
            steps, before, loss = done.steps, done.loss_before, done.loss
        elif validate is not None:
            loss = validate()
        return L0Report(
            layers=layers, method="l0", budget=config.budget.text, sequential=False,
            dense_loss=self.dense_loss, pruned_loss=loss, loss_before_finetune=before,
            alpha=config.alpha, calibration_passes=0,
            validation_passes=self.validation_passes, finetune_steps=steps, trials=self.trials,
            expected_sparsity=expected, gate_sparsity=closed / self.total,
            multiplier=self.multiplier, epochs=self.epochs,
        )

    def _plain_loss(self) -> float:
        self.validation_passes += 1
        return mean_loss(self.model, self.validation, self.loss_fn, self.device)
