"""`make report`: what a commit or an experiment changed against a base revision, in Markdown.

DVC's params, metrics and plots diffs, and each side's MLflow run, CPU and verdict: docs/team.md.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

import pipeline.params.config as config
import pipeline.params.tools as tools
import pipeline.tracking.lineage as lineage
import pipeline.tracking.store as tracking
from pipeline.data.files import write_text
from pipeline.gate import rule
from pipeline.reports import figures, review
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
        paths.per_class: lambda rows: rows[["class", *review.SCORES]].astype(
            dict.fromkeys(review.SCORES, float)
        ),
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

    fs, texts = DVCFileSystem(str(root), rev=revision.commit), {}  # rev None: the workspace
    try:
        for path in paths:
            try:
                texts[path] = fs.read_text(path)
            except Exception:  # not recorded, not cached, or a remote's own (botocore's, ...)
                texts[path] = None
        return texts
    finally:
        fs.close()


def presented(store: Store, found) -> review.Run:
    """A run of the store as the report shows it: name and link, the gate's verdict, CPU."""
    tags, info = found.data.tags, found.info
    server = store.uri if store.uri.startswith(("http://", "https://")) else UI_ADDRESS
    url = f"{server.rstrip('/')}/#/experiments/{info.experiment_id}/runs/{info.run_id}"
    status, failed, gain = (tags.get(name) for name in VERDICT_TAGS)
    verdict = f"{status} ({failed})" if failed and failed != "none" else status
    if gain:
        verdict += f"; gain over the champion {gain.rsplit(': ', 1)[-1]}"
    verdict = verdict if status else "no verdict recorded"
    return review.Run(info.run_id, info.run_name, url, verdict, tags.get(CPU_TAG))


def run_of(store: Store, revision: Revision, texts: dict, params: tools.ToolParams) -> tuple:
    """The side's run: the record's, else a clean one at its params with the record's metrics,
    else the newest clean run of its commit at its params; and how it was found."""
    import mlflow

    if store.client is None:
        return None, ""
    if texts[params.paths.run_info] is not None:
        with_run = json.loads(texts[params.paths.run_info])["run_id"]
        try:
            return store.client.get_run(with_run), ""
        except mlflow.exceptions.MlflowException:
            pass
    runs = clean_runs(store, texts[config.PARAMS_FILE], params.mlflow.experiment)
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
    role: str, revision: Revision, root: Path, params: tools.ToolParams, store: Store, plots: tuple
) -> review.Side:
    """A side: its record as DVC reads it, its run, its curves, and what it lacks."""
    paths, (tables, errors) = params.paths, plots
    texts = read_files(root, revision, [paths.run_info, paths.metrics, config.PARAMS_FILE])
    found, how = run_of(store, revision, texts, params)
    missing = errors.get(revision.name, [])
    history, history_from = tables.get((HISTORY_PLOT, revision.name)), ""
    if history is None and found is not None:
        history = run_history(store.client, found.info.run_id)
        if history is not None:
            history_from = f"its MLflow run's metric history ({paths.history} is not at hand)"
            missing = [line for line in missing if not line.startswith(paths.history)]
    if found is None and texts[paths.run_info] is None:
        missing.append(f"{paths.run_info} is not at hand, nor a run at its params in the store")
    if revision.commit is None and (status := json.loads(dvc(root, "status", "--json") or "{}")):
        missing.append(f"`dvc status` finds {', '.join(status)} changed since dvc.lock ran: its "
                       "outputs are not its params' and code's (`dvc repro`)")  # fmt: skip
    named = texts[paths.run_info] and json.loads(texts[paths.run_info])["run_id"]
    run = presented(store, found) if found else review.Run(named) if named else None
    source = "the experiment's record" if revision.experiment else "the committed record"
    source = "its files on disk" if revision.commit is None else source
    per_class = tables.get((paths.per_class, revision.name))
    confusion = tables.get((paths.confusion, revision.name))
    return review.Side(role, revision.label, source, per_class, confusion, history, history_from,
                       run, how, tuple(missing))  # fmt: skip


@dataclass(frozen=True)
class Store:
    """The MLflow store the runs are looked up in; `client` None when it does not exist."""

    uri: str
    client: object | None


def open_store(params: tools.ToolParams, root: Path) -> tuple[Store, str]:
    """The repo's store (MLFLOW_TRACKING_URI, else its SQLite file), never created here; and
    the report's sentence about it."""
    uri = tracking.tracking_uri(params.mlflow, root)
    if uri.startswith(("http://", "https://")):
        tracking.check_server(uri)
        return Store(uri, tracking.client_for(uri)), f"Runs from the MLflow server {uri}."
    database = tracking.local_db(uri)
    exists = database is None or database.is_file()
    where = f"`{uri}`" + ("" if exists else " (no such store here)")
    store = Store(uri, tracking.client_for(uri) if exists else None)
    return store, f"Runs from the MLflow store {where}; the links open with `make ui` running."


def clean_runs(store: Store, params_text: str | None, experiment: str) -> list:
    """Runs of a clean checkout whose params hash is that of these params, newest first."""
    if store.client is None or params_text is None:
        return []
    try:
        digest = lineage.params_sha256(config.parse_params(yaml.safe_load(params_text)))
    except (config.ConfigError, yaml.YAMLError):  # another schema: no hash to look for
        return []
    found = store.client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.params_sha256 = '{digest}' and tags.`git.dirty` = 'false'"
    order = ["attributes.start_time DESC"]
    return store.client.search_runs([found.experiment_id], query, order_by=order, max_results=100)


def run_history(client, run_id: str) -> pd.DataFrame | None:
    """train_history.csv's table as the run logged it: a row per logged iteration."""
    series = {
        metric: {point.step: point.value for point in client.get_metric_history(run_id, metric)}
        for metric in HISTORY_METRICS
    }
    if not any(series.values()):
        return None
    return pd.DataFrame(series).sort_index().rename_axis("iteration").reset_index()


def draw(folder: Path, sides: list[review.Side], class_names: list[str]) -> bool:
    """The comparison images; whether the curves were drawn (a side had its history)."""
    for name in (REPORT_FILE, review.CURVES_FILE, review.CONFUSION_CHANGE_FILE):
        (folder / name).unlink(missing_ok=True)  # an earlier report's
    if all(side.confusion is not None for side in sides):
        figure = review.confusion_change(*sides, class_names)
        figures.save(figure, folder / review.CONFUSION_CHANGE_FILE)
    if all(side.history is None for side in sides):
        return False
    figures.save(review.curves_of_both(sides), folder / review.CURVES_FILE)
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
        write_text(report, review.same_revision(base, target, revisions[0].commit))
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
    write_text(report, review.markdown(*sides, tables, [*notes, sentence], curves))
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
