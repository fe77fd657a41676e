"""`make report`: what a commit or an experiment changed against a base revision, in Markdown.

    python -m pipeline.tools.report [--base main] [--target workspace|REVISION|EXPERIMENT|best]

Writes `report.md` and its images into `report.output_dir` (params.yaml): the params that differ
(`dvc params diff`), both sides' metrics and the change (`dvc metrics diff`), per-class scores
with the largest F1 moves first, both MLflow runs with their validation verdict, the training
curves of both on one chart and the two confusion matrices side by side.

Nothing is recomputed: a revision's files come from git or the DVC cache (or remote) as that
revision recorded them, the workspace's from disk, its run from the MLflow store; a side whose
outputs are missing, or whose dvc.lock records other params than its params.yaml (a commit never
reproduced), says so in one line. `best` is the experiment of `dvc exp show` (HEAD's) with the
best `tune.metric` by `tune.direction`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

import pipeline.params.config as config
import pipeline.params.tools as tools
import pipeline.tracking.lineage as lineage
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
from pipeline.data.files import write_text
from pipeline.reports import figures, review
from pipeline.runtime.cli import setup_logging
from pipeline.validation import gate

log = logging.getLogger(__name__)

WORKSPACE = "workspace"
BEST = "best"
REPORT_FILE = "report.md"
UI_ADDRESS = "http://127.0.0.1:5000"  # `make ui`, where a run of the repo's own store opens
# evaluate's gate tags train's run: passed or failed, the failed checks, the gain's line
VERDICT_TAGS = (registry.STATUS_TAG, registry.FAILED_TAG, f"validation.{gate.GAIN}")


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

    def why_missing(self, path: str) -> str:
        if self.fs is None:
            return "not in the workspace"
        if path in self.failures:
            return f"not in the DVC cache, and its remote failed ({self.failures[path]})"
        return "not in the DVC cache" if self.fs.exists(path) else "not recorded at this revision"

    def close(self) -> None:
        if self.fs is not None:
            self.fs.close()


def missing_lines(files: Files, absent: list[str]) -> list[str]:
    """One phrase per reason: `not in the DVC cache: a, b (dvc pull ...)`."""
    reasons: dict[str, list[str]] = {}
    for path in absent:
        reasons.setdefault(files.why_missing(path), []).append(path)
    fixes = {"not in the DVC cache": " (`dvc pull` it, or `dvc repro` that revision)",
             "not in the workspace": " (`dvc pull`, or `dvc repro`)"}  # fmt: skip
    return [f"{why}: {', '.join(paths)}{fixes.get(why, '')}" for why, paths in reasons.items()]


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


def side_of(
    role: str, revision: Revision, root: Path, params: tools.ToolParams, store
) -> review.Side:
    """What the revision recorded: tables, history, its run; and what it lacks."""
    paths = params.paths
    wanted = [paths.metrics, paths.per_class, paths.confusion, paths.history, paths.run_info]
    files = Files(root, revision)
    try:
        texts = {path: files.read(path) for path in wanted}
        missing = missing_lines(files, [path for path, text in texts.items() if text is None])
        stale = stale_params(files)
        params_text = files.read(config.PARAMS_FILE)
    finally:
        files.close()
    if stale:
        missing.append(f"its dvc.lock ran other params than its params.yaml ({', '.join(stale)}): "
                       "its outputs are not this revision's (`dvc repro` it)")  # fmt: skip
    confusion = texts[paths.confusion]
    return review.Side(
        role,
        revision.label,
        per_class=table_of(texts[paths.per_class]),
        confusion=None if confusion is None else pd.read_csv(io.StringIO(confusion), dtype=str),
        history=table_of(texts[paths.history]),
        run=run_of(store, texts[paths.run_info])
        or run_trained_with(store, params_text, params.mlflow.experiment),
        missing=tuple(missing),
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


def run_of(store: Store, run_info: str | None) -> review.Run | None:
    """The run a side's run record names, as the store has it (or only its id)."""
    import mlflow

    if run_info is None:
        return None
    run_id = json.loads(run_info)["run_id"]
    if store.client is None:
        return review.Run(run_id)
    try:
        found = store.client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return review.Run(run_id)
    url = run_url(store.uri, found.info.experiment_id, run_id)
    return review.Run(run_id, found.info.run_name, url, verdict(found.data.tags))


def run_trained_with(store: Store, params_text: str | None, experiment: str) -> review.Run | None:
    """Without a run record (not in the cache: a clone that trained the revision itself), the
    newest run of a clean checkout whose params hash is the revision's params' (lineage tags)."""
    if store.client is None or params_text is None:
        return None
    try:
        digest = lineage.params_sha256(config.parse_params(yaml.safe_load(params_text)))
    except (config.ConfigError, yaml.YAMLError):  # another schema: no hash to look for
        return None
    found = store.client.get_experiment_by_name(experiment)
    runs = [] if found is None else store.client.search_runs(
        [found.experiment_id],
        f"tags.params_sha256 = '{digest}' and tags.`git.dirty` = 'false'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )  # fmt: skip
    if not runs:
        return None
    run = runs[0]
    url = run_url(store.uri, run.info.experiment_id, run.info.run_id)
    return review.Run(run.info.run_id, run.info.run_name, url, verdict(run.data.tags))


def clear(folder: Path) -> None:
    """Remove an earlier report's files (only those this tool writes)."""
    for name in (REPORT_FILE, review.CURVES_FILE, "confusion_base.png", "confusion_target.png"):
        (folder / name).unlink(missing_ok=True)


def draw(folder: Path, sides: list[review.Side], class_names: list[str]) -> bool:
    """The comparison images; whether the curves were drawn (a side had its history)."""
    for side in sides:
        if side.confusion is not None:
            figures.save(review.confusion_matrix(side, class_names), folder / side.confusion_file)
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
    change = dataclasses.replace(change, store=store.sentence())
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
