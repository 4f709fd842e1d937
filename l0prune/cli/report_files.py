"""``report.json`` and ``report.md`` of a prune run; the markdown is rendered from the JSON data,
so every figure it shows is in the JSON too."""

from __future__ import annotations

import json
from pathlib import Path

from l0prune.report import PruneReport

__all__ = ["FILES", "HF_FILES", "MODEL_FILES", "entry_name", "headline", "markdown", "run_reports",
           "write_reports"]

#: The files of an output folder and what each holds.
FILES = {
    "report.md": "this report",
    "report.json": "every figure of this report, machine-readable; its `files` lists what a "
                   "later run with the same `--out` may replace",
    "recipe.toml": "the settings of this run: `l0prune prune --config recipe.toml` repeats it",
    "sparsity_vs_loss.png": "validation loss against sparsity: search path and frontier",
    "layers.png": "per-layer sparsity and relative error",
}
#: The pruned model in the output folder of a model given as ``MODULE:NAME`` or the built-in one.
MODEL_FILES = {
    "model.pt": "pruned weights as a state dict with the dense model's keys "
                "(`model.load_state_dict(torch.load(path))`)",
    "model.sparse.pt": "the same weights, compact (`l0prune.load_sparse(path)`)",
}
#: The pruned model in a Hugging Face model's output folder (instead of :data:`MODEL_FILES`:
#: a second copy of an LLM's weights would double the folder).
HF_FILES = {
    "model/": "the pruned Hugging Face model, its tokenizer and recipe.toml: "
              "`from_pretrained(path)` (dense) or `l0prune.load_pretrained(path)` "
              "(`--save-format compressed` or `compressed-tensors`)",
}


def run_reports(data: dict) -> list[tuple[str, PruneReport]]:
    """``(method, report)`` of each run in ``data["runs"]``, the pruned model's first."""
    return [(run["method"], PruneReport.from_dict(run["report"])) for run in data["runs"]]


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _ratio(report: PruneReport) -> str:
    return f"{report.alpha_reached:.4f}" if report.alpha_reached is not None else "-"


def headline(data: dict) -> list[str]:
    """A few lines: each run's sparsity, loss ratio and scores, and how they compare."""
    lines = []
    for run, (method, report) in zip(data["runs"], run_reports(data), strict=True):
        scores = "".join(f", {name} {value:.4f}" for name, value in run["metrics"].items())
        if report.perplexity_ratio is not None:
            scores += (f", perplexity {report.pruned_perplexity:.4g} (dense "
                       f"{report.dense_perplexity:.4g}, ratio {report.perplexity_ratio:.4f})")
        lines.append(
            f"{method}: sparsity {100 * report.sparsity:.1f} % ({report.kept:,} of "
            f"{report.total:,} weights kept), loss / dense {_ratio(report)}{scores}, "
            f"{report.seconds:.1f} s"
        )
    if data["comparison"] is not None:
        lines.append(_verdict(data["comparison"], *run_reports(data)))
    return lines


def _verdict(comparison: dict, mine: tuple[str, PruneReport],
             base: tuple[str, PruneReport]) -> str:
    """Which run won, in words: fewer weights kept within the tolerance, or the lower loss at
    the same sparsity; the figures and the ratio follow."""
    (method, report), (baseline, other) = mine, base
    if report.alpha is not None:
        tolerance = f"within the same loss tolerance (alpha {report.alpha:g})"
        if report.kept == other.kept:
            return (f"{method} and {baseline} kept the same number of weights "
                    f"({report.kept:,}) {tolerance}")
        winner, loser = (mine, base) if report.kept < other.kept else (base, mine)
        return (
            f"{winner[0]} kept fewer weights than {loser[0]} {tolerance}: {winner[1].kept:,} "
            f"against {loser[1].kept:,} ({method} keeps {comparison['kept_vs_baseline']:.2f}x "
            f"the weights {baseline} keeps)"
        )
    ratio = comparison["loss_vs_baseline"]
    if ratio is None or report.pruned_loss is None:
        return f"{method} and {baseline} pruned to the same sparsity (no validation loss)"
    if report.pruned_loss == other.pruned_loss:
        return (f"at the same sparsity, {method} and {baseline} reached the same validation "
                f"loss ({report.pruned_loss:.4g})")
    winner, loser = (mine, base) if report.pruned_loss < other.pruned_loss else (base, mine)
    return (
        f"at the same sparsity, {winner[0]} reached a lower validation loss than {loser[0]}: "
        f"{winner[1].pruned_loss:.4g} against {loser[1].pruned_loss:.4g} ({method}'s is "
        f"{ratio:.4f}x {baseline}'s)"
    )


def _result_table(data: dict) -> list[str]:
    reports = run_reports(data)
    dense = data["dense"]
    rows = [
        ("sparsity of the pruned layers", "0.0 %",
         [f"{100 * r.sparsity:.1f} %" for _, r in reports]),
        ("weights kept", f"{reports[0][1].total:,}", [f"{r.kept:,}" for _, r in reports]),
        ("validation loss", _loss(dense["loss"]), [_loss(r.pruned_loss) for _, r in reports]),
        ("loss / dense", "1.0000", [_ratio(r) for _, r in reports]),
        ("loss before finetuning", "", [
            f"{r.loss_before_finetune:.4g}" if r.loss_before_finetune is not None else "-"
            for _, r in reports
        ]),
    ]
    first = reports[0][1]
    if first.dense_perplexity is not None:
        rows += [
            ("perplexity", f"{first.dense_perplexity:.4g}",
             [f"{r.pruned_perplexity:.4g}" if r.pruned_perplexity is not None else "-"
              for _, r in reports]),
            ("perplexity / dense", "1.0000",
             [f"{r.perplexity_ratio:.4f}" if r.perplexity_ratio is not None else "-"
              for _, r in reports]),
        ]
    for name, value in dense["metrics"].items():
        rows.append((name, f"{value:.4f}", [f"{run['metrics'][name]:.4f}"
                                           for run in data["runs"]]))
    rows.append(("seconds", "", [f"{r.seconds:.1f}" for _, r in reports]))
    lines = [
        "| | dense | " + " | ".join(method for method, _ in reports) + " |",
        "|---|---:|" + "---:|" * len(reports),
    ]
    lines += [f"| {label} | {first} | " + " | ".join(cells) + " |" for label, first, cells in rows]
    return lines


def _trials(method: str, report: PruneReport) -> list[str]:
    if not report.trials:
        return []
    gradual = report.trials[0].stage.startswith("gradual")
    lines = [
        f"### {'Gradual steps' if gradual else 'Search'}: {method}",
        "",
        "| # | stage | target | sparsity | loss / dense | before finetuning | within alpha |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for i, t in enumerate(report.trials, 1):
        before = (f"{t.loss_before_finetune / report.dense_loss:.4f}"
                  if t.loss_before_finetune is not None else "-")
        lines.append(
            f"| {i} | {t.stage} | {100 * t.target:.1f} % | {100 * t.sparsity:.1f} % | "
            f"{t.loss / report.dense_loss:.4f} | {before} | {'yes' if t.met else 'no'} |"
        )
    return lines + [""]


def _settings(recipe: dict) -> str:
    mode = (f"alpha {recipe['alpha']:g}" if "alpha" in recipe else
            f"sparsity {recipe['sparsity']:g}" if "sparsity" in recipe else "sized budget")
    finetune = (f"{recipe['finetune-epochs']} epoch(s) of {recipe['finetune-optimizer']}, "
                f"lr {recipe['finetune-lr']:g}" if recipe["finetune-epochs"] else "none")
    statistics = "sequential" if recipe["sequential"] else "parallel (dense model)"
    if "gradual" in recipe:
        mode += f", gradual in {recipe['gradual']} steps"
    return (f"method `{recipe['method']}`, baseline `{recipe['baseline']}`, {mode}, budget "
            f"{recipe['budget']}, {statistics} statistics, finetuning: {finetune}, seed "
            f"{recipe['seed']}")


def markdown(data: dict) -> str:
    """The report of a prune run as markdown (everything it shows comes from ``data``)."""
    reports = run_reports(data)
    files = data["files"]
    lines = [
        "# l0prune prune report",
        "",
        f"- model: {data['model']}",
        f"- settings: {_settings(data['recipe'])}",
        f"- command: `{data['command']}`",
        f"- wall time: {data['seconds']:.1f} s",
        "",
        "## Result",
        "",
        *_result_table(data),
        "",
        *(f"- {line}" for line in headline(data)),
        "",
        "![validation loss against sparsity](sparsity_vs_loss.png)",
        "",
        "## Layers",
        "",
    ]
    for method, report in reports:
        lines += [f"### {method}", "", report.table(), "", "```", report.summary(), "```", ""]
    lines += ["![per-layer sparsity and relative error](layers.png)", ""]
    for method, report in reports:
        lines += _trials(method, report)
    lines += ["## Files", "", "| file | bytes | what |", "|---|---:|---|"]
    model_files = HF_FILES if "model/" in files else MODEL_FILES
    for name, what in {**FILES, **model_files}.items():
        size = files.get(name)
        lines.append(f"| {name} | {f'{size:,}' if size is not None else ''} | {what} |")
    lines.append("")
    if "model.pt" in files:
        lines += [f"The compact file is {100 * files['model.sparse.pt'] / files['model.pt']:.1f} "
                  "% of the dense state dict.", ""]
    return "\n".join(lines)


def entry_name(path: Path) -> str:
    """How ``files`` names an entry of the folder: a folder's name ends in ``/``."""
    return path.name + ("/" if path.is_dir() else "")


def _size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def write_reports(folder: Path, data: dict) -> None:
    """Write ``report.json`` and ``report.md`` into ``folder``, ``data["files"]`` listing every
    entry there with its size (a folder's files summed), the two reports included, and
    ``data["contents"]`` every file inside its folders (``model/config.json``): together the
    manifest of the whole tree the run wrote.

    A report's size depends on the sizes it shows, so both are rendered until their sizes stop
    changing (two or three rounds: only the number of digits can move them).
    """
    files = {entry_name(p): _size(p) for p in folder.iterdir()}
    files.update({"report.json": 0, "report.md": 0})
    data["files"] = dict(sorted(files.items()))
    data["contents"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                              if p.is_file() and p.parent != folder)
    for _ in range(8):
        texts = {"report.json": json.dumps(data, indent=2) + "\n", "report.md": markdown(data)}
        sizes = {name: len(text.encode()) for name, text in texts.items()}
        if all(data["files"][name] == size for name, size in sizes.items()):
            break
        data["files"].update(sizes)
    else:
        raise RuntimeError(f"the report sizes did not settle: {sizes}")
    for name, text in texts.items():
        (folder / name).write_text(text)
