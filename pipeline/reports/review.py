"""The review of a change: two revisions' records as GitHub-flavoured Markdown and comparison
figures (training curves on one chart, the confusion matrices side by side). No I/O here:
pipeline/tools/report.py reads the records and writes the files."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.reports import figures

CURVES_FILE = "curves.png"
NONE = "—"  # a value a side did not record


@dataclass(frozen=True)
class Run:
    """A side's MLflow run: its id from the run record, and what the store says of it."""

    run_id: str
    name: str | None = None  # None: the store has no such run
    url: str | None = None
    verdict: str = "no verdict recorded"


@dataclass(frozen=True)
class Side:
    """What one revision (or the workspace) recorded; None where it recorded nothing."""

    role: str  # "base" or "target": also the stem of its image files
    label: str  # how the report names it: "`main` (3b750bd)", "workspace"
    per_class: pd.DataFrame | None = None  # class, precision, recall, f1, support
    confusion: pd.DataFrame | None = None  # actual, predicted: one row per test image
    history: pd.DataFrame | None = None  # iteration, train_loss, val_loss, train_accuracy, ...
    run: Run | None = None
    missing: tuple[str, ...] = ()  # one phrase per output it lacks

    @property
    def confusion_file(self) -> str:
        return f"confusion_{self.role}.png"


@dataclass(frozen=True)
class Change:
    """What differs between the sides, as `dvc params diff` and `dvc metrics diff` say."""

    params: dict[str, tuple[object, object]]  # stage param → (base, target)
    tool_params: list[str]  # tool settings that differ (no stage reads them)
    metrics: dict[str, tuple[object, object]]  # metric → (base, target)
    notes: list[str] = field(default_factory=list)  # e.g. how `best` was chosen
    store: str = ""  # where the runs were looked up, as a sentence


def value(number: object) -> str:
    """A param or metric as a table shows it."""
    if number is None:
        return NONE
    if isinstance(number, float):
        return f"{number:.4f}"
    return f"`{number}`" if isinstance(number, str) else str(number)


def difference(base: object, target: object) -> str:
    both_numbers = all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in (base, target)
    )
    return f"{target - base:+.4f}" if both_numbers else NONE


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def same_revision(base: str, target: str, commit: str) -> str:
    """The whole report when both sides, as the user named them, are one commit."""
    return (
        f"# Review: `{target}` against `{base}`\n\n"
        f"`{base}` and `{target}` are the same revision, `{commit[:7]}`: there is no change.\n"
    )


def markdown(base: Side, target: Side, change: Change, curves: bool) -> str:
    """The report: who is compared, params, metrics, per class, curves, confusion matrices."""
    notes = change.notes + [
        f"{side.role} {side.label}: {'; '.join(side.missing)}"
        for side in (base, target)
        if side.missing
    ]
    blocks = [
        [f"# Review: {target.label} against {base.label}"],
        [f"- {note}" for note in notes],
        sides_section(base, target, change.store),
        params_section(change),
        metrics_section(change),
        per_class_section(base, target),
        curves_section(curves),
        confusion_section(base, target),
    ]
    return "\n\n".join("\n".join(block) for block in blocks if block) + "\n"


def run_cell(run: Run | None) -> str:
    if run is None:
        return NONE
    if run.name is None:
        return f"`{run.run_id}` (not in this MLflow store)"
    name = f"[{run.name}]({run.url})" if run.url else run.name
    return f"{name} `{run.run_id}`"


def sides_section(base: Side, target: Side, store: str) -> list[str]:
    rows = [
        ["revision", base.label, target.label],
        ["MLflow run", run_cell(base.run), run_cell(target.run)],
        ["validation", *(side.run.verdict if side.run else NONE for side in (base, target))],
    ]
    return table(["", "base", "target"], rows) + (["", store] if store else [])


def params_section(change: Change) -> list[str]:
    lines = ["## Params", ""]
    if change.params:
        rows = [[f"`{name}`", value(old), value(new)] for name, (old, new) in change.params.items()]
        lines += table(["param", "base", "target"], rows)
    else:
        lines.append("No stage param differs.")
    if change.tool_params:
        names = ", ".join(f"`{name}`" for name in change.tool_params)
        lines += ["", f"Tool settings that differ too (no stage reads them): {names}."]
    return lines


def metrics_section(change: Change) -> list[str]:
    if not change.metrics:
        return ["## Metrics", "", "Neither side recorded metrics."]
    rows = [
        [f"`{name}`", value(old), value(new), difference(old, new)]
        for name, (old, new) in sorted(change.metrics.items())
    ]
    return ["## Metrics", "", *table(["metric", "base", "target", "change"], rows)]


def per_class_changes(base: pd.DataFrame | None, target: pd.DataFrame | None) -> pd.DataFrame:
    """Both sides' per-class scores on one row per class, the largest F1 move first."""
    columns = ["class", "precision", "recall", "f1", "support"]
    empty = pd.DataFrame(columns=columns).astype({"class": str})
    joined = (base if base is not None else empty).merge(
        target if target is not None else empty, on="class", how="outer",
        suffixes=("_base", "_target"), sort=False,
    )  # fmt: skip
    for score in ("precision", "recall", "f1"):
        joined[f"{score}_change"] = joined[f"{score}_target"] - joined[f"{score}_base"]
    order = joined["f1_change"].abs().fillna(-1).sort_values(ascending=False, kind="stable")
    return joined.loc[order.index].reset_index(drop=True)


def per_class_section(base: Side, target: Side) -> list[str]:
    lines = ["## Per class (largest F1 move first)", ""]
    if base.per_class is None and target.per_class is None:
        return lines + ["Neither side recorded per-class scores."]
    rows = []
    for row in per_class_changes(base.per_class, target.per_class).to_dict("records"):
        number = {key: None if pd.isna(x) else float(x) for key, x in row.items() if key != "class"}
        rows.append([f"`{row['class']}`", value(number["f1_base"]), value(number["f1_target"]),
                     signed(number["f1_change"]), signed(number["precision_change"]),
                     signed(number["recall_change"])])  # fmt: skip
    header = ["class", "F1 base", "F1 target", "F1 change", "precision change", "recall change"]
    return lines + table(header, rows)


def signed(number: float | None) -> str:
    return NONE if number is None else f"{number:+.4f}"


def curves_section(drawn: bool) -> list[str]:
    lines = ["## Training curves", ""]
    if not drawn:
        return lines + ["Neither side's training history is at hand."]
    return lines + [f"![training curves, base and target]({CURVES_FILE})"]


def confusion_section(base: Side, target: Side) -> list[str]:
    cells = [
        f"![{side.role} confusion matrix]({side.confusion_file})"
        if side.confusion is not None
        else f"{side.role}: not recorded"
        for side in (base, target)
    ]
    return ["## Confusion matrices (test)", "", *table([base.label, target.label], [cells])]


def training_curves(sides: list[Side]) -> Figure:
    """Loss and accuracy against the iteration: each side a colour, train solid, val dashed."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss, accuracy = figure.subplots(1, 2)
    for color, side in zip(("C0", "C3"), sides, strict=False):
        if side.history is None:
            continue
        for axes, metric in ((loss, "loss"), (accuracy, "accuracy")):
            for split, style in (("train", "-"), ("val", "--")):
                axes.plot(side.history["iteration"], side.history[f"{split}_{metric}"], style,
                          marker=".", color=color, label=f"{side.role} {split}")  # fmt: skip
    for axes, metric in ((loss, "loss"), (accuracy, "accuracy")):
        axes.set(xlabel="iteration", ylabel=metric, title=f"training curves, {metric}")
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def confusion_counts(confusion: pd.DataFrame, class_names: list[str]) -> tuple[np.ndarray, list]:
    """The (actual, predicted) rows as a count matrix over the class names (and any others)."""
    found = set(confusion["actual"]) | set(confusion["predicted"])
    names = list(class_names) + sorted(found - set(class_names))
    counts = pd.crosstab(confusion["actual"], confusion["predicted"])
    return counts.reindex(index=names, columns=names, fill_value=0).to_numpy(), names


def confusion_matrix(side: Side, class_names: list[str]) -> Figure:
    """The side's test confusion matrix, drawn as evaluate draws its own, titled by the side."""
    counts, names = confusion_counts(side.confusion, class_names)
    figure = figures.confusion_matrix(counts, names)
    figure.axes[0].set_title(f"{side.role}: {side.label.replace('`', '')}")
    return figure
