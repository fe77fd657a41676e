"""The review of a change as Markdown around DVC's tables, and its figures; no I/O (report.py).

The figures are drawn here, not in figures.py: an edit to a dependency of the train and evaluate
stages would make every `dvc repro` retrain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.reports.card import markdown_table

CURVES_FILE = "curves.png"
CONFUSION_CHANGE_FILE = "confusion_change.png"
NONE = "—"  # a value a side did not record
MOVES_SHOWN = 10  # rows of the confusion change's table
SCORES = ["precision", "recall", "f1"]


@dataclass(frozen=True)
class Run:
    """A side's MLflow run as the report shows it."""

    run_id: str
    name: str | None = None  # None: the store has no such run
    url: str | None = None
    verdict: str = "no verdict recorded"
    cpu: str | None = None  # the CPU model it trained on (its lineage tags), None: unknown


@dataclass(frozen=True)
class Side:
    """One revision (or the workspace) as the report shows it; None where it has nothing."""

    role: str  # "base" or "target"
    label: str  # how the report names it: "`main` (`3b750bd`)", "workspace"
    source: str = "the committed record"  # what its tables are: its record, as DVC reads it
    per_class: pd.DataFrame | None = None  # class, precision, recall, f1, support
    confusion: pd.DataFrame | None = None  # counts: actual classes as rows, predicted as columns
    history: pd.DataFrame | None = None  # iteration, train_loss, val_loss, train_accuracy, ...
    history_from: str = ""  # where the history came from when not the record's CSV
    run: Run | None = None
    run_found: str = ""  # how its run was found, when its run record does not name it
    missing: tuple[str, ...] = ()  # one phrase per thing it lacks


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return markdown_table(pd.DataFrame(rows, columns=header)).splitlines()


def number(value: float, sign: str = "") -> str:
    return NONE if pd.isna(value) else f"{value:{sign}.4f}"


def same_revision(base: str, target: str, commit: str) -> str:
    """The whole report when both sides, as the user named them, are one commit."""
    return (
        f"# Review: `{target}` against `{base}`\n\n"
        f"`{base}` and `{target}` are the same revision, `{commit[:7]}`: there is no change.\n"
    )


def markdown(
    base: Side, target: Side, dvc_tables: tuple[str, str], notes: list[str], curves: bool
) -> str:
    """The report; `dvc_tables`: `dvc params diff --md` and `dvc metrics diff --md --all`."""
    params, metrics = (text.strip() for text in dvc_tables)
    sides = (base, target)
    cpus = [side.run.cpu if side.run else None for side in sides]
    if None not in cpus and cpus[0] != cpus[1]:  # float sums in another order
        notes = notes + [
            f"the sides trained on different CPU kinds ({cpus[0]}; {cpus[1]}): at equal params "
            "their weights, and so their metrics, differ in the last digits"
        ]
    notes = notes + [f"{s.role} {s.label}: {'; '.join(s.missing)}" for s in sides if s.missing]
    blocks = [
        [f"# Review: {target.label} against {base.label}"],
        [side_line(base), "", side_line(target)],
        [f"- {note}" for note in notes],
        ["## Params (`dvc params diff`)", "", params or "No param differs."],
        ["## Metrics (`dvc metrics diff --all`)", "", metrics or "Neither side records metrics."],
        per_class_section(base, target),
        curves_section(curves, sides),
        confusion_section(base, target),
    ]
    return "\n\n".join("\n".join(block) for block in blocks if block) + "\n"


def side_line(side: Side) -> str:
    """`Base: <revision>, <what its tables are>; MLflow run <run>; made on <CPU>; verdict.`"""
    start, run = f"{side.role.capitalize()}: {side.label}, {side.source}", side.run
    if run is None:
        return f"{start}; no MLflow run at hand."
    name = f"[{run.name}]({run.url})" if run.url else run.name
    cell = f"{name} `{run.run_id}`" if run.name else f"`{run.run_id}` (not in this MLflow store)"
    cpu = f"made on {run.cpu}" if run.cpu else "CPU not recorded"
    return f"{start}; MLflow run {cell}{side.run_found}; {cpu}; gate: {run.verdict}."


def per_class_changes(base: pd.DataFrame | None, target: pd.DataFrame | None) -> pd.DataFrame:
    """Both sides' per-class scores on one row per class, the largest F1 move first."""
    empty = pd.DataFrame(columns=["class", *SCORES]).astype({"class": str})
    joined = (empty if base is None else base).merge(
        empty if target is None else target, on="class", how="outer", suffixes=("_base", "_target")
    )
    for score in SCORES:
        joined[f"{score}_change"] = joined[f"{score}_target"] - joined[f"{score}_base"]
    order = joined["f1_change"].abs().fillna(-1).sort_values(ascending=False, kind="stable")
    return joined.loc[order.index].reset_index(drop=True)


def per_class_section(base: Side, target: Side) -> list[str]:
    lines = ["## Per class (largest F1 move first)", ""]
    if base.per_class is None and target.per_class is None:
        return lines + ["Neither side records per-class scores."]
    changes = per_class_changes(base.per_class, target.per_class).to_dict("records")
    rows = [
        [f"`{row['class']}`", number(row["f1_base"]), number(row["f1_target"])]
        + [number(row[f"{score}_change"], "+") for score in ("f1", "precision", "recall")]
        for row in changes
    ]
    header = ["class", "F1 base", "F1 target", "F1 change", "precision change", "recall change"]
    return lines + table(header, rows)


def curves_section(drawn: bool, sides: tuple[Side, ...]) -> list[str]:
    lines = ["## Training curves", ""]
    if not drawn:
        return lines + ["Neither side's training history is at hand."]
    lines.append(f"![training curves, base and target]({CURVES_FILE})")
    sources = [
        f"The {side.role}'s curves are {side.history_from}."
        for side in sides
        if side.history is not None and side.history_from
    ]
    return lines + (["", " ".join(sources)] if sources else [])


def confusion_section(base: Side, target: Side) -> list[str]:
    """The change target − base, its image and the mistakes that moved, largest first."""
    lines = ["## Confusion change (test, target − base)", ""]
    if base.confusion is None or target.confusion is None:
        return lines + ["Only both sides' confusion records give a change."]
    before, after = (int(np.trace(c)) for c in aligned_counts(base.confusion, target.confusion))
    lines += [
        f"![confusion change, target − base]({CONFUSION_CHANGE_FILE})",
        "",
        f"Correct (the diagonal): base {before}, target {after} ({after - before:+d}).",
    ]
    moves = confusion_moves(base.confusion, target.confusion)
    if moves.empty:
        return lines + ["", "No mistake moved: every off-diagonal count is the same."]
    rows = [
        [f"`{move.actual}`", f"`{move.predicted}`", str(move.base), str(move.target)]
        + [f"{move.change:+d}"]
        for move in moves.head(MOVES_SHOWN).itertuples()
    ]
    more = len(moves) - MOVES_SHOWN
    footer = ["", f"{more} more cells moved, by as much or less."] if more > 0 else []
    header = ["true", "predicted", "base", "target", "change"]
    return lines + ["", "Mistakes that moved, largest first:", "", *table(header, rows), *footer]


def aligned_counts(
    base: pd.DataFrame, target: pd.DataFrame, class_names: list[str] = ()
) -> list[pd.DataFrame]:
    """Two count tables over one list of classes: the class names, then any other found."""
    found = {str(name) for counts in (base, target) for name in (*counts.index, *counts.columns)}
    names = list(class_names) + sorted(found - set(class_names))
    return [counts.reindex(index=names, columns=names, fill_value=0) for counts in (base, target)]


def confusion_moves(base: pd.DataFrame, target: pd.DataFrame) -> pd.DataFrame:
    """The mistakes (off-diagonal cells) whose count changed, the largest move first."""
    before, after = (
        counts.rename_axis(index="actual", columns="predicted").stack()
        for counts in aligned_counts(base, target)
    )
    moves = pd.DataFrame({"base": before, "target": after}).reset_index()
    moves = moves[(moves.actual != moves.predicted) & (moves.base != moves.target)]
    moves["change"] = moves.target - moves.base
    return moves.sort_values("change", key=abs, ascending=False, kind="stable")


def curves_of_both(sides: list[Side]) -> Figure:
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


def confusion_change(base: Side, target: Side, class_names: list[str]) -> Figure:
    """Target − base counts: mistakes red where the target makes more, blue fewer; the diagonal
    (correct answers) grey, its change in figures."""
    before, after = aligned_counts(base.confusion, target.confusion, class_names)
    names, change = list(after.index), (after - before).to_numpy(dtype=int)
    diagonal = np.eye(len(names), dtype=bool)
    limit = max(1, int(np.abs(change[~diagonal]).max(initial=0)))
    figure = Figure(figsize=(6.5, 5.5), layout="constrained")
    axes = figure.subplots()
    colours = colormaps["RdBu_r"].with_extremes(bad="0.85")  # masked: the diagonal
    image = axes.imshow(np.ma.masked_array(change, diagonal), cmap=colours, vmin=-limit,
                        vmax=limit)  # fmt: skip
    for (row, column), count in np.ndenumerate(change):
        if count or row == column:
            strong = row != column and abs(count) > limit / 2
            color = "0.35" if row == column else "white" if strong else "black"
            axes.text(column, row, f"{count:+d}" if count else "0", ha="center", va="center",
                      fontsize=7, color=color)  # fmt: skip
    axes.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names,
             yticklabels=names, xlabel="predicted", ylabel="true",
             title=f"test confusion, {target.label} − {base.label}".replace("`", ""))  # fmt: skip
    figure.colorbar(image, ax=axes, shrink=0.8, ticks=MaxNLocator(integer=True),
                    label="mistakes, target − base (red: more)")  # fmt: skip
    return figure
