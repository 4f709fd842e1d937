"""What a pruning run reports: per layer and overall, as a table or as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

__all__ = ["LayerReport", "PruneReport", "Trial"]


def _known(cls, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class LayerReport:
    """One pruned layer.

    Attributes:
        name: fully qualified module name.
        shape: the weight's shape, out x in (x kernel) for every layer type (a Hugging Face
            ``Conv1D``, stored in x out, is shown transposed).
        kept: weights kept.
        total: weights in the layer.
        relative_error: the layer's relative output error ``tr(D H D^T) / tr(W H W^T)``.
        seconds: solver time.
    """

    name: str
    shape: list[int]
    kept: int
    total: int
    relative_error: float
    seconds: float

    @property
    def sparsity(self) -> float:
        """Fraction of the layer's weights removed."""
        return 1.0 - self.kept / self.total if self.total else 0.0


@dataclass
class Trial:
    """One step of the loss-tolerance search (or of a prune-retrain workflow).

    Attributes:
        stage: ``"uniform"`` (every layer at one sparsity) or ``"allocated"`` (a global budget
            spread by the layers' error curves), each bisected then followed by an upward scan
            (``"uniform scan"``, ``"allocated scan"``); ``"layer"``: a layer the best trial
            left dense, pruned on top of it (see :mod:`l0prune.pipeline.search`). The prune-retrain
            workflows report their steps the same way: ``"gradual"``, ``"gradual continued"``,
            ``"gradual retry"`` (:func:`l0prune.gradual`) and ``"l0"`` (:func:`l0prune.train_l0`).
        target: the sparsity tried (of that one layer for a ``"layer"`` trial).
        sparsity: the sparsity reached over all targets.
        loss: validation loss (after finetuning when there is finetuning).
        loss_before_finetune: validation loss before finetuning, if any.
        met: whether ``loss <= alpha * dense loss``.
    """

    stage: str
    target: float
    sparsity: float
    loss: float
    loss_before_finetune: float | None
    met: bool


@dataclass
class PruneReport:
    """The result of :func:`l0prune.prune`.

    Attributes:
        layers: one :class:`LayerReport` per pruned layer, in the order they run.
        method: the solver method.
        budget: the budget family, as text.
        sequential: whether statistics were taken layer after layer.
        dense_loss: validation loss of the dense model (``None`` without validation data).
        pruned_loss: validation loss of the returned model (after finetuning, if any).
        loss_before_finetune: validation loss of the pruned model before finetuning.
        alpha: the loss tolerance asked for, if any.
        seconds: wall time of the run.
        calibration_passes: passes over the calibration data to take statistics.
        validation_passes: passes over the validation data.
        finetune_steps: optimizer steps of finetuning, all trials together.
        trials: the search steps, in order (empty without ``alpha``).
        skipped: targets left dense because the budget does not fit them (name -> why), with
            ``skip_incompatible``.
        perplexity: the loss is a mean next-token negative log-likelihood (a causal LM), so
            ``exp`` of each loss is a perplexity and the report gives them.
        blocks: the stack pruned block by block (its name and block count), or ``None`` for
            the whole-model path.
        threads: torch CPU threads the run used.
        config: the run's configuration (:meth:`l0prune.PruneConfig.to_dict`).

    Example:
        >>> report = PruneReport([LayerReport("fc", [4, 8], 8, 32, 0.1, 0.01)], "admm", "u", True)
        >>> report.sparsity
        0.75
        >>> PruneReport.from_json_string(report.to_json()) == report
        True
    """

    layers: list[LayerReport]
    method: str
    budget: str
    sequential: bool
    dense_loss: float | None = None
    pruned_loss: float | None = None
    loss_before_finetune: float | None = None
    alpha: float | None = None
    seconds: float = 0.0
    calibration_passes: int = 0
    validation_passes: int = 0
    finetune_steps: int = 0
    trials: list[Trial] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    perplexity: bool = False
    blocks: str | None = None
    threads: int | None = None
    config: dict | None = None

    @property
    def kept(self) -> int:
        """Weights kept over all pruned layers."""
        return sum(layer.kept for layer in self.layers)

    @property
    def total(self) -> int:
        """Weights in all pruned layers."""
        return sum(layer.total for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of the pruned layers' weights removed."""
        return 1.0 - self.kept / self.total if self.total else 0.0

    @property
    def alpha_reached(self) -> float | None:
        """``pruned_loss / dense_loss``, when both are known."""
        if self.dense_loss is None or self.pruned_loss is None or self.dense_loss == 0:
            return None
        return self.pruned_loss / self.dense_loss

    def _exp(self, loss: float | None) -> float | None:
        return math.exp(loss) if self.perplexity and loss is not None else None

    @property
    def dense_perplexity(self) -> float | None:
        """``exp(dense_loss)`` for a next-token loss, else ``None``."""
        return self._exp(self.dense_loss)

    @property
    def pruned_perplexity(self) -> float | None:
        """``exp(pruned_loss)`` for a next-token loss, else ``None``."""
        return self._exp(self.pruned_loss)

    @property
    def perplexity_ratio(self) -> float | None:
        """``pruned_perplexity / dense_perplexity = exp(pruned_loss - dense_loss)``, when both
        are known.

        Example:
            >>> report = PruneReport([], "obs", "u", True, dense_loss=math.log(20),
            ...                      pruned_loss=math.log(25), perplexity=True)
            >>> round(report.pruned_perplexity, 6), round(report.perplexity_ratio, 6)
            (25.0, 1.25)
        """
        if self.dense_perplexity is None or self.pruned_perplexity is None:
            return None
        return math.exp(self.pruned_loss - self.dense_loss)

    def table(self) -> str:
        """The per-layer results as a markdown table.

        Returns:
            The table, one row per layer and a total row.

        Example:
            >>> PruneReport([LayerReport("fc", [4, 8], 8, 32, 0.1, 0.01)], "admm", "u",
            ...             True).table().splitlines()[2]
            '| fc | 4x8 | 8 / 32 | 75.0 % | 1.000e-01 | 0.01 |'
        """
        lines = [
            "| layer | shape | kept | sparsity | relative error | solver s |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for layer in self.layers:
            lines.append(
                f"| {layer.name} | {'x'.join(map(str, layer.shape))} | "
                f"{layer.kept:,} / {layer.total:,} | {100 * layer.sparsity:.1f} % | "
                f"{layer.relative_error:.3e} | {layer.seconds:.2f} |"
            )
        seconds = sum(layer.seconds for layer in self.layers)
        lines.append(
            f"| **all** | | {self.kept:,} / {self.total:,} | {100 * self.sparsity:.1f} % | "
            f"| {seconds:.2f} |"
        )
        return "\n".join(lines)

    def summary(self) -> str:
        """The overall results in a few lines of text.

        Returns:
            Sparsity and method; losses when known; passes, steps, trials and time.

        Example:
            >>> PruneReport([], "admm", "Unstructured()", True).summary().splitlines()[0][:37]
            'sparsity 0.00 % (0 of 0 weights kept)'
        """
        mode = "sequential" if self.sequential else "parallel"
        lines = [
            f"sparsity {100 * self.sparsity:.2f} % ({self.kept:,} of {self.total:,} weights "
            f"kept), method {self.method}, budget {self.budget}, {mode} statistics"
            + (f", block by block ({self.blocks})" if self.blocks else "")
        ]
        if self.dense_loss is not None and self.pruned_loss is not None:
            reached = self.alpha_reached
            text = f"loss: dense {self.dense_loss:.4g}, pruned {self.pruned_loss:.4g}"
            if reached is not None:
                text += f" (ratio {reached:.4f}"
                text += f", alpha {self.alpha:g})" if self.alpha is not None else ")"
            if self.loss_before_finetune is not None:
                text += f"; before finetuning {self.loss_before_finetune:.4g}"
            lines.append(text)
        if self.skipped:
            lines.append(f"left dense, the budget does not fit them: {', '.join(self.skipped)}")
        if self.perplexity_ratio is not None:
            lines.append(
                f"perplexity: dense {self.dense_perplexity:.4g}, pruned "
                f"{self.pruned_perplexity:.4g} (ratio {self.perplexity_ratio:.4f})"
            )
        lines.append(
            f"passes: {self.calibration_passes} over the calibration data, "
            f"{self.validation_passes} over the validation data; "
            f"{self.finetune_steps} finetuning steps; {len(self.trials)} search trials; "
            f"{self.seconds:.1f} s" + (f" on {self.threads} thread(s)" if self.threads else "")
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table() + "\n\n" + self.summary()

    def to_dict(self) -> dict:
        """A JSON-ready dict: every field plus ``kept``, ``total``, ``sparsity``,
        ``alpha_reached`` and the perplexities (and each layer's ``sparsity``).

        Returns:
            The dict.

        Example:
            >>> PruneReport([], "admm", "u", True).to_dict()["sparsity"]
            0.0
        """
        data = asdict(self)
        data["layers"] = [{**asdict(layer), "sparsity": layer.sparsity} for layer in self.layers]
        data.update(
            kept=self.kept, total=self.total, sparsity=self.sparsity,
            alpha_reached=self.alpha_reached, dense_perplexity=self.dense_perplexity,
            pruned_perplexity=self.pruned_perplexity, perplexity_ratio=self.perplexity_ratio,
        )
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text, also written to ``path`` when given.

        Args:
            path: a file to write, or ``None``.

        Returns:
            The JSON text.

        Example:
            >>> '"method": "admm"' in PruneReport([], "admm", "u", True).to_json()
            True
        """
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> PruneReport:
        """A report from :meth:`to_dict` output (derived figures are recomputed).

        Args:
            data: the dict.

        Returns:
            The report.

        Example:
            >>> PruneReport.from_dict(PruneReport([], "admm", "u", True).to_dict()).method
            'admm'
        """
        values = _known(cls, data)
        values["layers"] = [LayerReport(**_known(LayerReport, layer)) for layer in data["layers"]]
        values["trials"] = [Trial(**trial) for trial in data.get("trials", [])]
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> PruneReport:
        """A report from the file :meth:`to_json` wrote.

        Args:
            path: the JSON file.

        Returns:
            The report.

        Example:
            >>> import tempfile, os
            >>> report = PruneReport([LayerReport("fc", [4, 8], 8, 32, 0.1, 0.01)], "admm", "u",
            ...                      True)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     _ = report.to_json(os.path.join(d, "report.json"))
            ...     PruneReport.from_json(os.path.join(d, "report.json")) == report
            True
        """
        path = Path(path)
        try:
            found = path.is_file()
        except OSError:  # JSON text given as a path: a name too long for the system
            found = False
        if not found:
            raise ValueError(
                f"path must be a JSON file written by PruneReport.to_json, got {str(path)[:60]!r} "
                "(no such file; for JSON text use PruneReport.from_json_string)"
            )
        return cls.from_json_string(path.read_text())

    @classmethod
    def from_json_string(cls, text: str) -> PruneReport:
        """A report from the JSON text :meth:`to_json` returns.

        Args:
            text: the JSON text.

        Returns:
            The report.

        Example:
            >>> text = PruneReport([], "admm", "u", True).to_json()
            >>> PruneReport.from_json_string(text).sequential
            True
        """
        return cls.from_dict(json.loads(text))
