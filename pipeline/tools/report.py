"""`make report`: what a commit or an experiment changed against a base revision, in Markdown.

DVC's params, metrics and plots diffs, and each side's MLflow run, CPU and verdict: docs/team.md.
The figures are drawn here, not in reports/figures.py: an edit to a dependency of the train and
evaluate stages would make every `dvc repro` retrain.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import pipeline.params.config as config
import pipeline.params.tools as tools
import pipeline.tracking.lineage as lineage
import pipeline.tracking.store as tracking
from pipeline.data.files import write_text
from pipeline.gate import rule
from pipeline.reports import figures
from pipeline.reports.card import markdown_table
from pipeline.runtime import cli

log = logging.getLogger(__name__)

WORKSPACE = "workspace"
REPORT_FILE = "report.md"
UI_ADDRESS = "http://127.0.0.1:5000"  # `make ui`, where a run of the repo's own store opens
# evaluate's gate tags train's run: passed or failed, the failed checks, the gain's line
VERDICT_TAGS = (rule.STATUS_TAG, rule.FAILED_TAG, f"validation.{rule.GAIN}")
CPU_TAG = f"{lineage.ENV_PREFIX}cpu"  # the CPU model a run trained on (lineage.environment_tags)
# What train's History logs into its run every interval, step = iteration: train_history.csv's
HISTORY_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
HISTORY_PLOT = "loss"  # dvc.yaml's plot of train_history.csv (its rows carry every column)
CURVES_FILE = "curves.png"
CONFUSION_CHANGE_FILE = "confusion_change.png"
NONE = "—"  # a value a side did not record
MOVES_SHOWN = 10  # rows of the confusion change's table
SCORES = ["precision", "recall", "f1"]


class ReportError(Exception):
    """The report cannot be made; the message says which revision or what is missing."""


@dataclass(frozen=True)
class Revision:
    """A side of the comparison: a commit (an experiment's too), or the workspace."""

    name: str  # as the user gave it
    commit: str | None  # None: the workspace
    experiment: bool = False

    @property
    def label(self) -> str:
        if self.commit is None:
            return WORKSPACE
        short = f"`{self.commit[:7]}`"
        named = short if self.commit.startswith(self.name) else f"`{self.name}` ({short})"
        return f"experiment {named}" if self.experiment else named


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


def resolve_revision(repo, name: str) -> Revision:
    """A git revision or a `dvc exp` name (as DVC resolves it), or the workspace."""
    from dvc.scm import RevError, resolve_rev
    from scmrepo.exceptions import SCMError

    if name == WORKSPACE:
        return Revision(name, None)
    try:
        return Revision(name, repo.scm.resolve_rev(name))
    except SCMError:
        pass
    try:
        return Revision(name, resolve_rev(repo.scm, name), experiment=True)
    except (RevError, SCMError):
        raise ReportError(f"unknown revision or experiment: {name}") from None


def best_experiment(root: Path, tune: tools.TuneParams) -> tuple[str, str]:
    """HEAD's experiment with the best selection metric, and a note of how it was chosen."""
    import dvc.api

    scores = {}  # a row's column is `file:metric` when the name is ambiguous
    for row in dvc.api.exp_show(repo=str(root)):
        found = [value for key, value in row.items() if key.split(":")[-1] == tune.metric]
        if row.get("Experiment"):
            scores[row["Experiment"]] = next(iter(found), None)
    scored = {name: score for name, score in scores.items() if isinstance(score, int | float)}
    if not scores:
        raise ReportError("HEAD has no experiment to choose the best of (dvc exp show lists none)")
    if not scored:
        raise ReportError(
            f"no experiment of HEAD records {tune.metric} (tune.metric) to choose the best by; "
            f"experiments considered: {', '.join(scores)}"
        )
    best = (max if tune.direction == "maximize" else min)(scored, key=scored.__getitem__)
    unscored = ", ".join(sorted(set(scores) - set(scored)))
    note = (
        f"`best`: experiment `{best}`, {tune.metric} {scored[best]:.4f} "
        f"({tune.direction}, tune.metric) among {len(scored)} of HEAD's experiments"
    )
    return best, note + (f"; without {tune.metric}: {unscored}" if unscored else "")


def dvc(root: Path, *args: str) -> str:
    """What a `dvc` command prints; ReportError with its last line when it fails."""
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ReportError(f"dvc {' '.join(args[:2])} failed: {last}")
    return result.stdout


def plots_of(root: Path, paths: config.PathParams, revisions: list[str]) -> tuple[dict, dict]:
    """dvc.yaml's plots of history, per class and confusion at both revisions, as tables by
    (plot, revision name); and DVC's errors by revision name ("path: DVC's message")."""
    tables = {
        HISTORY_PLOT: lambda rows: rows.drop_duplicates("iteration")[  # a row per y field
            ["iteration", *HISTORY_METRICS]
        ].astype(float),
        paths.per_class: lambda rows: rows[["class", *SCORES]].astype(dict.fromkeys(SCORES, float)),
        paths.confusion: lambda rows: pd.crosstab(rows["actual"], rows["predicted"]),
    }
    with tempfile.TemporaryDirectory() as folder:  # where DVC would put image plots
        targets = ["-o", folder, "--targets", *tables, "--", *revisions]
        text = dvc(root, "plots", "diff", "--json", *targets)
    found, plots, errors = json.loads(text), {}, {}
    for name, drawn in found.get("data", {}).items():
        table = pd.DataFrame([row for plot in drawn for row in plot["content"]["data"]["values"]])
        for revision, part in table.groupby("rev") if not table.empty else []:
            plots[name, revision] = tables[name](part)
    for error in found.get("errors", []):
        errors.setdefault(error["rev"], []).append(f"{error['source']}: {error['msg']}")
    return plots, errors


def read_files(root: Path, revision: Revision, paths: list[str]) -> dict[str, str | None]:
    """A side's files through git and the DVC cache (or its remote); None where absent."""
    from dvc.api import DVCFileSystem

    texts = dict.fromkeys(paths)
    with contextlib.closing(DVCFileSystem(str(root), rev=revision.commit)) as fs:  # None: workspace
        for path in paths:
            with contextlib.suppress(Exception):  # not recorded, not cached, a remote's own error
                texts[path] = fs.read_text(path)
    return texts


def presented(found, links: str) -> Run:
    """A run of the store as the report shows it: name and link, the gate's verdict, CPU."""
    tags, info = found.data.tags, found.info
    url = f"{links.rstrip('/')}/#/experiments/{info.experiment_id}/runs/{info.run_id}"
    status, failed, gain = (tags.get(name) for name in VERDICT_TAGS)
    verdict = f"{status} ({failed})" if failed and failed != "none" else status
    if gain:  # the tag's line ends in "gain" or "no gain"
        verdict += f"; against the champion: {gain.rsplit(': ', 1)[-1]}"
    if status and tags.get("validation.version"):  # the registered version it is about
        verdict += f"; version {tags['validation.version']}"
    verdict = verdict if status else "no verdict recorded"
    return Run(info.run_id, info.run_name, url, verdict, tags.get(CPU_TAG))


def run_of(
    client, revision: Revision, named: str | None, texts: dict, params: tools.ToolParams
) -> tuple:
    """The side's run: the record's, else a clean one at its params with the record's metrics,
    else the newest clean run of its commit at its params; and how it was found."""
    import mlflow

    if client is None:
        return None, ""
    if named:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            return client.get_run(named), ""
    runs = clean_runs(client, texts[config.PARAMS_FILE], params.mlflow.experiment)
    recorded = json.loads(texts[params.paths.metrics] or "{}")
    metrics = {key: value for key, value in recorded.items() if isinstance(value, int | float)}
    for found in runs if metrics else []:
        logged = found.data.metrics
        if all(math.isclose(logged.get(key, math.nan), value) for key, value in metrics.items()):
            return found, " (its own, found by its params and metrics)"
    for found in runs:
        if revision.commit and found.data.tags.get("git_commit") == revision.commit:
            return found, (" (a run of its commit at its params in this store, not the "
                           "record's own, which is not here)")  # fmt: skip
    return None, ""


def side_of(
    role: str, revision: Revision, root: Path, params: tools.ToolParams, store: tuple, plots: tuple
) -> Side:
    """A side: its record as DVC reads it, its run, its curves, and what it lacks."""
    (client, links), (tables, errors), paths = store, plots, params.paths
    texts = read_files(root, revision, [paths.run_info, paths.metrics, config.PARAMS_FILE])
    named = texts[paths.run_info] and json.loads(texts[paths.run_info])["run_id"]
    found, how = run_of(client, revision, named, texts, params)
    missing = errors.get(revision.name, [])
    history, history_from = tables.get((HISTORY_PLOT, revision.name)), ""
    if history is None and found is not None:
        history = run_history(client, found.info.run_id)
        if history is not None:
            history_from = f"its MLflow run's metric history ({paths.history} is not at hand)"
            missing = [line for line in missing if not line.startswith(paths.history)]
    if found is None and not named:
        missing.append(f"{paths.run_info} is not at hand, nor a run at its params in the store")
    if revision.commit is None and (status := json.loads(dvc(root, "status", "--json") or "{}")):
        missing.append(f"`dvc status` finds {', '.join(status)} changed since dvc.lock ran: its "
                       "outputs are not its params' and code's (`dvc repro`)")  # fmt: skip
    run = presented(found, links) if found else Run(named) if named else None
    source = "the experiment's record" if revision.experiment else "the committed record"
    source = "its files on disk" if revision.commit is None else source
    per_class = tables.get((paths.per_class, revision.name))
    confusion = tables.get((paths.confusion, revision.name))
    return Side(role, revision.label, source, per_class, confusion, history, history_from,
                run, how, tuple(missing))  # fmt: skip


def open_store(params: tools.ToolParams, root: Path) -> tuple[tuple, str]:
    """The repo's store (MLFLOW_TRACKING_URI, else its SQLite file), never created here: its
    client (None: no such store) and where its runs' links open; and a sentence about it."""
    uri = tracking.tracking_uri(params.mlflow, root)
    if uri.startswith(("http://", "https://")):
        tracking.check_server(uri)
        return (tracking.client_for(uri), uri), f"Runs from the MLflow server {uri}."
    database = tracking.local_db(uri)
    exists = database is None or database.is_file()
    where = f"`{uri}`" + ("" if exists else " (no such store here)")
    client = tracking.client_for(uri) if exists else None
    sentence = f"Runs from the MLflow store {where}; the links open with `make ui` running."
    return (client, UI_ADDRESS), sentence


def clean_runs(client, params_text: str | None, experiment: str) -> list:
    """Runs of a clean checkout whose params hash is that of these params, newest first."""
    if params_text is None:
        return []
    try:
        digest = lineage.params_sha256(config.parse_params(yaml.safe_load(params_text)))
    except (config.ConfigError, yaml.YAMLError):  # another schema: no hash to look for
        return []
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.params_sha256 = '{digest}' and tags.`git.dirty` = 'false'"
    order = ["attributes.start_time DESC"]
    return client.search_runs([found.experiment_id], query, order_by=order, max_results=100)


def run_history(client, run_id: str) -> pd.DataFrame | None:
    """train_history.csv's table as the run logged it: a row per logged iteration."""
    series = {
        metric: {point.step: point.value for point in client.get_metric_history(run_id, metric)}
        for metric in HISTORY_METRICS
    }
    if not any(series.values()):
        return None
    return pd.DataFrame(series).sort_index().rename_axis("iteration").reset_index()


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return markdown_table(pd.DataFrame(rows, columns=header)).splitlines()


def number(value: float, sign: str = "") -> str:
    return NONE if pd.isna(value) else f"{value:{sign}.4f}"


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


def draw(folder: Path, sides: list[Side], class_names: list[str]) -> bool:
    """The comparison images; whether the curves were drawn (a side had its history)."""
    for name in (REPORT_FILE, CURVES_FILE, CONFUSION_CHANGE_FILE):
        (folder / name).unlink(missing_ok=True)  # an earlier report's
    if all(side.confusion is not None for side in sides):
        figure = confusion_change(*sides, class_names)
        figures.save(figure, folder / CONFUSION_CHANGE_FILE)
    if all(side.history is None for side in sides):
        return False
    figures.save(curves_of_both(sides), folder / CURVES_FILE)
    return True


def run(params: tools.ToolParams, params_file: str | Path, base: str, target: str) -> Path:
    """Write the report of `target` against `base` in the repo of `params_file`; its path."""
    from dvc.repo import Repo

    root, notes = Path(params_file).resolve().parent, []
    if target == "best":
        target, note = best_experiment(root, params.tune)
        notes.append(note)
    if base == WORKSPACE:
        raise ReportError("the base is a revision: the workspace can only be the target")
    with Repo(str(root)) as repo:
        revisions = [resolve_revision(repo, base), resolve_revision(repo, target)]
    report = root / params.report.output_dir / REPORT_FILE
    if revisions[0].commit == revisions[1].commit:
        same = f"`{base}` and `{target}` are the same revision, `{revisions[0].commit[:7]}`"
        write_text(
            report, f"# Review: `{target}` against `{base}`\n\n{same}: there is no change.\n"
        )
        log.info("wrote %s: %s and %s are the same revision", report, base, target)
        return report
    tables = (dvc(root, "params", "diff", "--md", "--", base, target),
              dvc(root, "metrics", "diff", "--md", "--all", "--", base, target))  # fmt: skip
    plots = plots_of(root, params.paths, [base, target])
    store, sentence = open_store(params, root)
    sides = [side_of(role, revision, root, params, store, plots)
             for role, revision in zip(("base", "target"), revisions, strict=True)]  # fmt: skip
    report.parent.mkdir(parents=True, exist_ok=True)
    curves = draw(report.parent, sides, params.data.class_names)
    write_text(report, markdown(*sides, tables, [*notes, sentence], curves))
    log.info("wrote %s: %s against %s", report, target, base)
    return report


ARGUMENTS = {
    "--base": {"default": "main", "help": "a git revision (default: %(default)s)"},
    "--target": {
        "default": WORKSPACE,
        "help": "the workspace (default), a git revision, a `dvc exp` name, or `best`",
    },
}


def main(argv: list[str] | None = None) -> None:
    expected, load = (ReportError, tracking.TrackingError), tools.load_params_or_exit
    cli.run_command(run, argv, __doc__, ARGUMENTS, expected, load)


if __name__ == "__main__":
    main()
