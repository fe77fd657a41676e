"""Where runs are tracked (the repo's SQLite store by default), lineage tags, the champion alias."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from filelock import FileLock

import pipeline.shared.config as config
import pipeline.shared.stage as stage

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
SERVER_TIMEOUT = 5.0  # seconds a tracking server gets to answer before the stage gives up
# MLflow's client retries a failed request 7 times with doubling waits (~4 minutes) by default;
# a stage whose server went away should say so within seconds: 3 retries wait ~6-9 s in all.
# Set either variable to choose otherwise.
SERVER_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# `mlflow ui` / `mlflow server` start job-consumer processes (huey) for GenAI jobs unless told
# not to; this project runs none, and `mlflow ui` leaves them behind when stopped.
NO_SERVER_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
CHAMPION = "champion"
CHAMPION_METRIC = "test_accuracy"
# A search's trials tag their runs with the study and trial number (pipeline/team/tune.py).
TRIAL_TAG_ENV = {"optuna.study": "PIPELINE_OPTUNA_STUDY", "optuna.trial": "PIPELINE_OPTUNA_TRIAL"}
# What a run's result depends on: a change here since the baseline commit marks it dirty.
INPUT_PATHS = ("params.yaml", "dvc.yaml", "pipeline", "pyproject.toml")


def repo_root() -> Path:
    """The DVC repo the run belongs to, even when `dvc exp run` executes in a temporary copy.

    DVC sets DVC_ROOT for every stage command; for queued and --temp experiments it points at
    the parent repository, not at the copy (dvc/repo/experiments/queue/base.py).
    """
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return here


def tracking_uri(params: config.MlflowParams, root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite file `tracking_db` at the repo root."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{(root / params.tracking_db).resolve()}"


def artifact_location(params: config.MlflowParams, root: Path) -> str:
    """Artifacts sit in a folder beside the store, whatever folder the stage runs in."""
    return (root / params.artifacts_dir).resolve().as_uri()


class TrackingError(Exception):
    """The tracking store cannot be reached; the message names its URI."""


def check_server(uri: str, timeout: float = SERVER_TIMEOUT) -> None:
    """Fail fast, before any training, when a tracking server does not answer.

    MLflow's own client retries for minutes; its server answers GET /health.
    """
    if not _is_server(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server that lacks /health may still be MLflow behind a proxy
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or str(error) or type(error).__name__
        raise TrackingError(
            f"MLflow tracking server {uri} did not answer within {timeout:g} s ({reason}); "
            f"start it, or unset {TRACKING_URI_ENV} to use the repo's SQLite store"
        ) from None


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def server_lost_as_error() -> Iterator[None]:
    """A tracking server that stops answering mid-stage ends the stage with one clear line."""
    try:
        yield
    except (mlflow.exceptions.MlflowException, OSError) as error:
        uri = mlflow.get_tracking_uri()
        if not _is_server(uri):
            raise
        try:
            check_server(uri)
        except TrackingError:
            reason = str(error).strip().splitlines()[0][:200]
            raise TrackingError(
                f"MLflow tracking server {uri} stopped answering during the stage ({reason}); "
                "start it again and rerun the stage: outputs from before are in DVC's cache"
            ) from None
        raise


def local_db(uri: str) -> Path | None:
    """The SQLite file of a `sqlite:///` URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str | None = None) -> Iterator[None]:
    """Serialise store set-up and champion promotion across parallel experiments.

    Two processes opening a new SQLite store both run its migrations and collide; two
    evaluations promoting at once could leave the alias on the worse model. Server stores
    handle their own concurrency, so only a local SQLite file gets a lock file beside it.
    """
    database = local_db(uri or mlflow.get_tracking_uri())
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock", timeout=300):
        yield


def _use_wal(database: Path) -> None:
    """Write-ahead logging lets readers (the UI) and one writer work at once; it persists."""
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def connect(params: config.MlflowParams, root: Path) -> str:
    """Point MLflow's tracking and registry at the store (failing fast if it is a server that
    does not answer); return its URI."""
    uri = tracking_uri(params, root)
    if _is_server(uri):
        for name, value in SERVER_RETRIES.items():
            os.environ.setdefault(name, value)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def beside_store(uri: str, params: config.MlflowParams) -> str | None:
    """For a SQLite store named by MLFLOW_TRACKING_URI, the artifacts folder beside it; None for
    a server, which keeps artifacts where it is configured to.

    Left to MLflow, a new experiment's artifacts would go to `./mlruns` under the working folder
    of whichever stage created it: under `dvc exp run --temp` a temporary copy that DVC deletes
    when that experiment ends, taking the later runs' models with it.
    """
    database = local_db(uri)
    return None if database is None else artifact_location(params, database.parent)


def use_store(params: config.MlflowParams, root: Path | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    root = root or repo_root()
    overridden = bool(os.environ.get(TRACKING_URI_ENV))  # read first: set_tracking_uri sets it
    uri = connect(params, root)
    with store_lock(uri):
        if (database := local_db(uri)) is not None:
            _use_wal(database)
        experiment = mlflow.get_experiment_by_name(params.experiment)
        location = None if overridden else artifact_location(params, root)
        if experiment is None:
            experiment_id = mlflow.create_experiment(
                params.experiment, artifact_location=location or beside_store(uri, params)
            )
        else:
            experiment_id = experiment.experiment_id
            if location and experiment.artifact_location != location:
                raise TrackingError(
                    f"{uri} keeps artifacts in {experiment.artifact_location}, not in this "
                    f"repo's {location}: the repo was moved or copied; run `make relocate` "
                    "(python -m pipeline.team.relocate) to point the store here"
                )
    log.info("tracking to %s, experiment %r", uri, params.experiment)
    return experiment_id


@contextlib.contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """End the active run as KILLED, never left RUNNING, when the stage is interrupted."""
    try:
        yield
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise


def process_tags() -> dict[str, str]:
    """Which process owns a run, so a later stage can tell a killed run from a live one."""
    return {"pipeline.host": socket.gethostname(), "pipeline.pid": str(os.getpid())}


def close_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark as KILLED the RUNNING runs whose process on this host is gone (e.g. after SIGKILL)."""
    client = mlflow.MlflowClient()
    closed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        pid = tags.get("pipeline.pid", "")
        if (
            tags.get("pipeline.host") == socket.gethostname()
            and pid.isdigit()
            and not stage.process_alive(int(pid))
        ):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
            log.warning("run %s was left RUNNING by a process that died; marked KILLED",
                        run.info.run_id)  # fmt: skip
    return closed


def flatten(values: dict[str, Any]) -> dict[str, str]:
    """Nested params → {"train.learning_rate": "0.001", ...}; lists become JSON."""
    row = pd.json_normalize(values, sep=".").iloc[0].to_dict()
    return {
        key: json.dumps(value) if isinstance(value, list) else str(value)
        for key, value in row.items()
    }


def params_sha256(params: config.Params) -> str:
    """A stable hash of every validated param value."""
    canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def lineage_tags(data_hashes: dict[str, str], params: config.Params) -> dict[str, str]:
    """Tags that lead from a run back to its commit, DVC experiment, data and params."""
    tags = {f"data.{name}_sha256": digest for name, digest in data_hashes.items()}
    tags["params_sha256"] = params_sha256(params)
    commit = _git("rev-parse", "HEAD")
    if commit:
        # In `dvc exp run` HEAD is the experiment's baseline; its changes are uncommitted.
        changed = _git("diff", "--name-only", "HEAD", "--", *INPUT_PATHS) or ""
        tags |= {
            "git_commit": commit,
            "mlflow.source.git.commit": commit,
            "git.dirty": str(bool(changed)).lower(),
            "git.changed_files": ",".join(changed.split()),
        }
    # Set by `make tune` for each trial's `dvc exp run`.
    tags |= {tag: os.environ[name] for tag, name in TRIAL_TAG_ENV.items() if os.environ.get(name)}
    # Set by DVC while running `dvc exp run` (dvc/repo/experiments/queue/base.py).
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    baseline = os.environ.get("DVC_EXP_BASELINE_REV") or commit
    if baseline:
        tags["dvc.baseline_rev"] = baseline
    return tags


def choose_champion(scores: dict[int, float], current: int | None) -> int:
    """The version with the best score; the current champion keeps it on a tie."""
    best = max(scores.values())
    if current in scores and scores[current] >= best:
        return current
    return min(version for version, score in scores.items() if score == best)


def version_scores(client: mlflow.MlflowClient, name: str) -> dict[int, float]:
    """Each registered version's test accuracy, for the versions that have one."""
    scores = {}
    for version in client.search_model_versions(f"name='{name}'"):
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        if CHAMPION_METRIC in metrics:
            scores[int(version.version)] = metrics[CHAMPION_METRIC]
    return scores


def champion_score(client: mlflow.MlflowClient, name: str) -> tuple[int, float] | None:
    """The champion's version and test accuracy, if there is a champion with one."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    score = client.get_run(version.run_id).data.metrics.get(CHAMPION_METRIC)
    return None if score is None else (int(version.version), score)


def register_if_better(name: str, model_uri: str, score: float) -> int | None:
    """Register the model as a new version only if its score beats the champion's.

    For searches and sweeps: the registry keeps the models that were, when made, the best so
    far, not one version per trial. Two that both beat the champion at once both register;
    promote_champion then picks the better.
    """
    client = mlflow.MlflowClient()
    with store_lock():
        current = champion_score(client, name)
    if current is not None and score <= current[1]:
        log.info("not registered: %s %.4f does not beat %s@%s (version %d, %.4f)",
                 CHAMPION_METRIC, score, name, CHAMPION, *current)  # fmt: skip
        return None
    version = int(mlflow.register_model(model_uri, name).version)
    log.info("registered %s version %d (%s %.4f)", name, version, CHAMPION_METRIC, score)
    return version


def promote_champion(name: str, max_rounds: int = 20) -> int | None:
    """Point the `champion` alias at the registered version with the best test accuracy.

    A local SQLite store is locked meanwhile. A server is shared by processes on any machine,
    so after moving the alias the versions are read again, and the choice made again until
    no new score came in: whichever evaluation sets the alias last has seen every version
    scored before it, so the alias ends on the best, whatever the interleaving.
    """
    client = mlflow.MlflowClient()
    with store_lock():
        scores = version_scores(client, name)
        for _ in range(max_rounds):
            if not scores:
                return None
            try:
                current = int(client.get_model_version_by_alias(name, CHAMPION).version)
            except mlflow.exceptions.MlflowException:
                current = None
            champion = choose_champion(scores, current)
            if champion != current:
                client.set_registered_model_alias(name, CHAMPION, str(champion))
                log.info("%s@%s is now version %d (%s %.4f)", name, CHAMPION, champion,
                         CHAMPION_METRIC, scores[champion])  # fmt: skip
            scores, seen = version_scores(client, name), scores
            if scores == seen:
                break
    return champion
