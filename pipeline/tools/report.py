"""`make report`: what a commit or an experiment changed against a base revision, in Markdown.

    python -m pipeline.tools.report [--base main] [--target workspace|REVISION|EXPERIMENT|best]

Writes `report.md` and its images into `report.output_dir` (params.yaml): what each side is
(a `Base:` and a `Target:` line), the params that differ (`dvc params diff`), both sides'
metrics and the change (`dvc metrics diff`), per-class scores with the largest F1 moves first,
both MLflow runs with their validation verdict and CPU, the training curves of both on one chart
and the confusion change, target − base.

Nothing is recomputed, and a side's column is one thing only. It is its revision's record (from
git, the DVC cache or remote; the workspace's from disk) with that record's own MLflow run: the
one its run record names or, without one, a clean run at its params whose metrics are the
record's. When the store has no such run (the record was made elsewhere: on another CPU kind the
weights differ in the last bits), a clean run of that commit at its params is the whole side:
metrics, per class, confusion, curves and link. A record without its train_history.csv takes its
curves from its run's metric history. A side whose outputs are missing, or whose dvc.lock records
other params than its params.yaml (a commit never reproduced), says so in one line, with advice
only where some can work here. `best` is the experiment of `dvc exp show` (HEAD's) with the best
`tune.metric` by `tune.direction`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import tempfile
from collections.abc import Iterator
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
from pipeline.runtime.cli import setup_logging

log = logging.getLogger(__name__)

WORKSPACE = "workspace"
BEST = "best"
REPORT_FILE = "report.md"
UI_ADDRESS = "http://127.0.0.1:5000"  # `make ui`, where a run of the repo's own store opens
# evaluate's gate tags train's run: passed or failed, the failed checks, the gain's line
VERDICT_TAGS = (rule.STATUS_TAG, rule.FAILED_TAG, f"validation.{rule.GAIN}")
CPU_TAG = f"{lineage.ENV_PREFIX}cpu"  # the CPU model a run trained on (lineage.environment_tags)
# What train's History logs into its run every interval, step = iteration: train_history.csv's
HISTORY_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
# What evaluate logs into train's run beside metrics.json (evaluate.log_results)
PER_CLASS_ARTIFACT = "evaluation/per_class.json"  # a table, pandas' "split" JSON
CONFUSION_ARTIFACT = "evaluation/confusion_matrix.json"  # {"labels": [...], "matrix": [...]}


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


def resolve(repo, name: str) -> Revision:
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


def metric_of(row: dict, metric: str) -> float | None:
    """A `dvc exp show` row's value of `metric` (its column is `file:metric` when ambiguous)."""
    found = [value for key, value in row.items() if key == metric or key.endswith(f":{metric}")]
    return found[0] if found and isinstance(found[0], int | float) else None


def best_experiment(root: Path, tune: tools.TuneParams) -> tuple[str, str]:
    """HEAD's experiment with the best selection metric, and a note of how it was chosen."""
    import dvc.api

    rows = [row for row in dvc.api.exp_show(repo=str(root)) if row.get("Experiment")]
    scores = {row["Experiment"]: metric_of(row, tune.metric) for row in rows}
    scored = {name: score for name, score in scores.items() if score is not None}
    if not scores:
        raise ReportError("HEAD has no experiment to choose the best of (dvc exp show lists none)")
    if not scored:
        raise ReportError(
            f"no experiment of HEAD records {tune.metric} (tune.metric) to choose the best by; "
            f"experiments considered: {', '.join(scores)}"
        )
    choose = max if tune.direction == "maximize" else min
    best = choose(scored, key=scored.__getitem__)
    unscored = sorted(set(scores) - set(scored))
    note = (
        f"`best`: experiment `{best}`, {tune.metric} {scored[best]:.4f} "
        f"({tune.direction}, tune.metric) among {len(scored)} of HEAD's experiments"
    )
    return best, note + (f"; without {tune.metric}: {', '.join(unscored)}" if unscored else "")


def flattened(diff: dict) -> dict[str, tuple[object, object]]:
    """`dvc params/metrics diff` per file → one name per value (`file:key` beyond one file)."""
    several = len(diff) > 1
    return {
        f"{file}:{key}" if several else key: (entry.get("old"), entry.get("new"))
        for file, entries in diff.items()
        for key, entry in entries.items()
    }


def change_of(repo, base: Revision, target: Revision, notes: list[str]) -> review.Change:
    """What `dvc params diff` and `dvc metrics diff --all` say (tool settings set apart)."""
    revisions = {"a_rev": base.commit, "b_rev": target.commit or WORKSPACE}
    changed = flattened(repo.params.diff(**revisions).get("diff", {}))
    tool = [name for name in changed if name.split(".")[0] in config.TOOL_SECTIONS]
    stage = {name: values for name, values in changed.items() if name not in tool}
    metrics = flattened(repo.metrics.diff(**revisions, all=True).get("diff", {}))
    return review.Change(stage, tool, metrics, notes)


class Files:
    """A side's files: the workspace's on disk, a commit's through git and the DVC cache (or
    its remote, read without filling the cache)."""

    def __init__(self, root: Path, revision: Revision) -> None:
        from dvc.api import DVCFileSystem

        self.root, self.revision = root, revision
        self.fs = None if revision.commit is None else DVCFileSystem(str(root), rev=revision.commit)
        self.failures: dict[str, str] = {}  # path → why a remote could not give it
        # the revision's own default remote, which read() has tried already
        self.remote = None if self.fs is None else self.fs.repo.config["core"].get("remote")

    def read(self, path: str) -> str | None:
        if self.fs is None:
            file = self.root / path
            return file.read_text() if file.is_file() else None
        try:
            return self.fs.read_text(path)
        except FileNotFoundError:  # not committed, or in neither the cache nor a remote
            return None
        except Exception as error:  # a remote's own (botocore's NoCredentialsError, ...)
            self.failures[path] = str(error).splitlines()[0] if str(error) else type(error).__name__
            return None

    def why_missing(self, path: str) -> tuple[str, str]:
        """Why `path` is absent, and what would bring it here ("" where nothing can)."""
        if self.fs is None:
            return "not in the workspace", " (`dvc repro`)"
        if path in self.failures:
            return (f"not in the DVC cache, and its remote failed ({self.failures[path]})",
                    " (`dvc pull` once the remote answers)")  # fmt: skip
        if not self.fs.exists(path):
            return "not recorded at this revision", ""
        # read() tried the remote too: pulling cannot help, only training that commit here
        where = (f"in neither the DVC cache nor the DVC remote `{self.remote}`" if self.remote
                 else "not in the DVC cache, and no DVC remote is configured")  # fmt: skip
        return where, f" (`git checkout {self.revision.name}`, `dvc repro`: its run then shows)"

    def close(self) -> None:
        if self.fs is not None:
            self.fs.close()


def missing_lines(absent: dict[str, tuple[str, str]]) -> list[str]:
    """One phrase per reason: `not recorded at this revision: a, b`, with its advice if any."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for path, reason in absent.items():
        reasons.setdefault(reason, []).append(path)
    return [f"{why}: {', '.join(paths)}{fix}" for (why, fix), paths in reasons.items()]


def lookup(params: dict, key: str) -> object:
    for part in key.split("."):
        params = params.get(part) if isinstance(params, dict) else None
    return params


def leaves(value: object, key: str) -> Iterator[tuple[str, object]]:
    """A recorded param as dotted keys and values: a whole section (`train`) as its keys."""
    if isinstance(value, dict):
        for name, inner in value.items():
            yield from leaves(inner, f"{key}.{name}")
    else:
        yield key, value


def same_value(recorded: object, current: object) -> bool:
    """Equal, reading numbers as numbers (YAML 1.1 reads DVC's `5e-04` as a string)."""
    try:
        return float(recorded) == float(current)
    except (TypeError, ValueError):
        return recorded == current


def stale_params(files: Files) -> list[str]:
    """Params whose value in params.yaml differs from what dvc.lock ran the stages with."""
    lock, params = files.read("dvc.lock"), files.read(config.PARAMS_FILE)
    if not lock or not params:
        return []
    current = yaml.safe_load(params)
    recorded = {
        key: value
        for stage in (yaml.safe_load(lock).get("stages") or {}).values()
        for name, section in stage.get("params", {}).get(config.PARAMS_FILE, {}).items()
        for key, value in leaves(section, name)
    }
    return sorted(
        key for key, value in recorded.items() if not same_value(value, lookup(current, key))
    )


def table_of(text: str | None) -> pd.DataFrame | None:
    return None if text is None else pd.read_csv(io.StringIO(text), dtype={"class": str})


def counts_of(text: str | None) -> pd.DataFrame | None:
    """confusion.csv's (actual, predicted) rows as counts, actual classes as rows."""
    if text is None:
        return None
    rows = pd.read_csv(io.StringIO(text), dtype=str)
    return pd.crosstab(rows["actual"], rows["predicted"])


@dataclass(frozen=True)
class Record:
    """What a revision recorded (the workspace: what is on disk), and why any of it is absent."""

    revision: Revision
    texts: dict[str, str | None]  # path → its text, None where absent
    absent: dict[str, tuple[str, str]]  # path → why, and what would bring it
    stale: list[str]  # params its dvc.lock ran with other values than its params.yaml holds
    params_text: str | None


def read_record(root: Path, revision: Revision, paths: config.PathParams) -> Record:
    wanted = [paths.metrics, paths.per_class, paths.confusion, paths.history, paths.run_info]
    files = Files(root, revision)
    try:
        texts = {path: files.read(path) for path in wanted}
        absent = {path: files.why_missing(path) for path, text in texts.items() if text is None}
        return Record(revision, texts, absent, stale_params(files), files.read(config.PARAMS_FILE))
    finally:
        files.close()


def side_of(
    role: str, revision: Revision, root: Path, params: tools.ToolParams, store: Store
) -> review.Side:
    """The revision's record with its own run; else, when the store lacks that run, a run of
    the commit at its params as the whole side; else the record alone."""
    record = read_record(root, revision, params.paths)
    own = record_run(store, record, params)
    if own.run is None and revision.commit is not None:
        runs = clean_runs(store, record.params_text, params.mlflow.experiment, revision.commit)
        if runs:
            return side_from_run(role, revision, runs[0], store)
    return side_from_record(role, record, own, store, params.paths)


def record_name(revision: Revision) -> str:
    if revision.commit is None:
        return "its files on disk"
    return "the experiment's record" if revision.experiment else "the committed record"


def side_from_record(
    role: str, record: Record, own: RecordRun, store: Store, paths: config.PathParams
) -> review.Side:
    """The revision's files with their own run; the curves from that run's metric history when
    the record's train_history.csv is absent."""
    absent = dict(record.absent)
    history, history_from = table_of(record.texts[paths.history]), ""
    if own.run is not None:
        absent.pop(paths.run_info, None)
    if own.run is not None and history is None:
        history = run_history(store.client, own.run.info.run_id)
        if history is not None:
            history_from = f"its MLflow run's metric history ({paths.history} is not at hand)"
            absent.pop(paths.history)
    missing = missing_lines(absent)
    if record.stale:
        missing.append(f"its dvc.lock ran other params than its params.yaml "
                       f"({', '.join(record.stale)}): its outputs are not this revision's "
                       "(`dvc repro` it)")  # fmt: skip
    matched = " (its run found by its params and metrics)" if own.matched else ""
    run = presented(store, own.run) if own.run else review.Run(own.named) if own.named else None
    return review.Side(
        role,
        record.revision.label,
        source=record_name(record.revision) + matched,
        per_class=table_of(record.texts[paths.per_class]),
        confusion=counts_of(record.texts[paths.confusion]),
        history=history,
        history_from=history_from,
        run=run,
        missing=tuple(missing),
    )


def side_from_run(role: str, revision: Revision, found, store: Store) -> review.Side:
    """The whole side from one run: its metrics, per class, confusion and curves."""
    run_id = found.info.run_id
    per_class = run_per_class(store.client, run_id)
    confusion = run_confusion(store.client, run_id)
    history = run_history(store.client, run_id)
    parts = {PER_CLASS_ARTIFACT: per_class, CONFUSION_ARTIFACT: confusion,
             "a metric history": history}  # fmt: skip
    lacks = [name for name, value in parts.items() if value is None]
    return review.Side(
        role,
        revision.label,
        source=f"a run of its commit at its params, not {record_name(revision)} "
        "(whose run is not in this MLflow store)",
        per_class=per_class,
        confusion=confusion,
        history=history,
        history_from="its MLflow run's metric history",
        run=presented(store, found),
        metrics=dict(found.data.metrics),
        missing=(f"its run lacks {', '.join(lacks)}",) if lacks else (),
    )


@dataclass(frozen=True)
class Store:
    """The MLflow store the runs are looked up in; `client` None when it does not exist."""

    uri: str
    client: object | None

    def sentence(self) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"Runs from the MLflow server {self.uri}."
        where = f"`{self.uri}`" + ("" if self.client else " (no such store here)")
        return f"Runs from the MLflow store {where}; the links open with `make ui` running."


def open_store(params: tools.ToolParams, root: Path) -> Store:
    """The repo's store (MLFLOW_TRACKING_URI, else its SQLite file), never created here."""
    uri = tracking.tracking_uri(params.mlflow, root)
    database = tracking.local_db(uri)
    if database is not None and not database.is_file():
        return Store(uri, None)
    tracking.check_server(uri)
    return Store(uri, tracking.client_for(uri))


def run_url(store_uri: str, experiment_id: str, run_id: str) -> str:
    server = store_uri if store_uri.startswith(("http://", "https://")) else UI_ADDRESS
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def verdict(tags: dict[str, str]) -> str:
    """The gate's verdict: the release checks' status, the failed ones, the gain's outcome."""
    status, failed, gain = (tags.get(name) for name in VERDICT_TAGS)
    if not status:
        return "no verdict recorded"
    text = f"{status} ({failed})" if failed and failed != "none" else status
    return text + (f"; gain over the champion {gain.rsplit(': ', 1)[-1]}" if gain else "")


def presented(store: Store, found) -> review.Run:
    """A run of the store as the report shows it: name and link, verdict, CPU."""
    tags, info = found.data.tags, found.info
    url = run_url(store.uri, info.experiment_id, info.run_id)
    return review.Run(info.run_id, info.run_name, url, verdict(tags), tags.get(CPU_TAG))


@dataclass(frozen=True)
class RecordRun:
    """A record's own run: the id its run record names, the run as the store has it, and
    whether it was found by matching params and metrics instead."""

    named: str | None = None
    run: object | None = None  # an mlflow.entities.Run
    matched: bool = False


def record_run(store: Store, record: Record, params: tools.ToolParams) -> RecordRun:
    """The run the record names; without a run record (a clone that never pulled it), a clean
    run at its params whose metrics are the record's: on another CPU kind a rerun's differ."""
    import mlflow

    run_info = record.texts[params.paths.run_info]
    named = None if run_info is None else json.loads(run_info)["run_id"]
    if store.client is None:
        return RecordRun(named)
    if named is not None:
        try:
            return RecordRun(named, store.client.get_run(named))
        except mlflow.exceptions.MlflowException:
            return RecordRun(named)
    recorded = record.texts[params.paths.metrics]
    metrics = {key: value for key, value in json.loads(recorded or "{}").items()
               if isinstance(value, int | float)}  # fmt: skip
    for run in clean_runs(store, record.params_text, params.mlflow.experiment) if metrics else []:
        logged = run.data.metrics
        if all(math.isclose(logged.get(key, math.nan), value) for key, value in metrics.items()):
            return RecordRun(None, run, matched=True)
    return RecordRun()


def clean_runs(store: Store, params_text: str | None, experiment: str, commit: str = "") -> list:
    """Runs of a clean checkout (of `commit`, when given) whose params hash is that of these
    params (lineage tags), newest first."""
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
    query += f" and tags.git_commit = '{commit}'" if commit else ""
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


def run_artifact(client, run_id: str, path: str) -> str | None:
    """A run's artifact as text; None when the run has none there."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        try:
            return Path(client.download_artifacts(run_id, path, folder)).read_text()
        except (mlflow.exceptions.MlflowException, OSError):
            return None


def run_per_class(client, run_id: str) -> pd.DataFrame | None:
    text = run_artifact(client, run_id, PER_CLASS_ARTIFACT)
    if text is None:
        return None
    return pd.read_json(io.StringIO(text), orient="split").astype({"class": str})


def run_confusion(client, run_id: str) -> pd.DataFrame | None:
    """The run's confusion counts, actual classes as rows."""
    text = run_artifact(client, run_id, CONFUSION_ARTIFACT)
    if text is None:
        return None
    matrix = json.loads(text)
    labels = [str(label) for label in matrix["labels"]]
    return pd.DataFrame(matrix["matrix"], index=labels, columns=labels)


def with_run_metrics(
    metrics: dict[str, tuple[object, object]], base: review.Side, target: review.Side
) -> dict[str, tuple[object, object]]:
    """`dvc metrics diff`'s values; a side that is a run has its run's values instead."""

    def value(side: review.Side, name: str, recorded: object) -> object:
        return recorded if side.metrics is None else side.metrics.get(name.rsplit(":", 1)[-1])

    return {name: (value(base, name, old), value(target, name, new))
            for name, (old, new) in metrics.items()}  # fmt: skip


def clear(folder: Path) -> None:
    """Remove an earlier report's files (only those this tool writes)."""
    images = (review.CURVES_FILE, review.CONFUSION_CHANGE_FILE, "confusion_base.png",
              "confusion_target.png")  # fmt: skip
    for name in (REPORT_FILE, *images):
        (folder / name).unlink(missing_ok=True)


def draw(folder: Path, sides: list[review.Side], class_names: list[str]) -> bool:
    """The comparison images; whether the curves were drawn (a side had its history)."""
    if all(side.confusion is not None for side in sides):
        figure = review.confusion_change(*sides, class_names)
        figures.save(figure, folder / review.CONFUSION_CHANGE_FILE)
    else:
        for side in sides:
            if side.confusion is not None:
                figure = review.confusion_matrix(side, class_names)
                figures.save(figure, folder / side.confusion_file)
    if all(side.history is None for side in sides):
        return False
    figures.save(review.training_curves(sides), folder / review.CURVES_FILE)
    return True


def run(params: tools.ToolParams, root: Path, base: str, target: str) -> Path:
    """Write the report of `target` against `base`; return the path of report.md."""
    from dvc.repo import Repo

    notes = []
    if target == BEST:
        target, note = best_experiment(root, params.tune)
        notes.append(note)
    if base == WORKSPACE:
        raise ReportError("the base is a revision: the workspace can only be the target")
    with Repo(str(root)) as repo:
        base_revision, target_revision = resolve(repo, base), resolve(repo, target)
        same = base_revision.commit == target_revision.commit
        change = None if same else change_of(repo, base_revision, target_revision, notes)
    report = root / params.report.output_dir / REPORT_FILE
    clear(report.parent)
    if change is None:
        write_text(report, review.same_revision(base, target, base_revision.commit))
        log.info("wrote %s: %s and %s are the same revision", report, base, target)
        return report
    store = open_store(params, root)
    sides = [side_of("base", base_revision, root, params, store),
             side_of("target", target_revision, root, params, store)]  # fmt: skip
    curves = draw(report.parent, sides, params.data.class_names)
    metrics = with_run_metrics(change.metrics, *sides)
    change = dataclasses.replace(change, metrics=metrics, store=store.sentence())
    write_text(report, review.markdown(*sides, change, curves))
    log.info("wrote %s: %s against %s", report, target, base)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = config.params_parser(__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="a git revision (default: %(default)s)")
    parser.add_argument(
        "--target",
        default=WORKSPACE,
        help="the workspace (default), a git revision, a `dvc exp` name, or `best`",
    )
    args = parser.parse_args(argv)
    params = tools.load_params_or_exit(args.params)
    setup_logging()
    try:
        run(params, Path(args.params).resolve().parent, args.base, args.target)
    except (ReportError, tracking.TrackingError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
