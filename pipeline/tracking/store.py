"""Where runs are tracked: the repo's SQLite store by default, or a server; locks, orphaned runs."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

import pipeline.params.config as config
import pipeline.runtime.cli as cli
import pipeline.runtime.processes as processes

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
SERVER_TIMEOUT = 5.0  # seconds a tracking server gets to answer before the stage gives up
# MLflow's client retries a failed request 7 times with doubling waits (~4 minutes) by default;
# a stage whose server went away should say so within seconds: 3 retries wait ~6-9 s in all.
SERVER_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# `mlflow ui` / `mlflow server` start job-consumer processes (huey) for GenAI jobs unless told
# not to; this project runs none, and `mlflow ui` leaves them behind when stopped.
NO_SERVER_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def repo_root() -> Path:
    """The DVC repo the run belongs to, even when `dvc exp run` executes in a temporary copy."""
    # DVC_ROOT names the parent repo, not the copy, for queued and --temp experiments too.
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


def shown(uri: str) -> str:
    """A store's URI as a message may print it: without a password in it."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


def require_run(run_id: str, origin: str | None, handed_over_in: str) -> None:
    """Fail with one line when the store lacks (or deleted) the run a stage was handed."""
    import mlflow

    here = shown(mlflow.get_tracking_uri())
    try:
        if mlflow.MlflowClient().get_run(run_id).info.lifecycle_stage != "deleted":
            return
        where, hint = f"a run deleted from {here}", ""
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        where = f"a run of {shown(origin) if origin else 'another store'}, which {here} lacks"
        hint = (
            f", or set MLFLOW_TRACKING_URI={shown(origin)} to evaluate it there" if origin else ""
        )
    raise TrackingError(
        f"{handed_over_in} names MLflow run {run_id}, {where} (DVC restored train's outputs "
        f"from its run cache): run `dvc repro -f train` to train it again into this store{hint}"
    )


def check_server(uri: str, timeout: float = SERVER_TIMEOUT) -> None:
    """Fail fast, before any training, when a tracking server does not answer GET /health."""
    if not is_server(uri):
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


@contextlib.contextmanager
def server_lost_as_error() -> Iterator[None]:
    """A tracking server that stops answering mid-stage ends the stage with one clear line."""
    import mlflow

    try:
        yield
    except (mlflow.exceptions.MlflowException, OSError) as error:
        uri = mlflow.get_tracking_uri()
        if not is_server(uri):
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


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def local_db(uri: str) -> Path | None:
    """The SQLite file of a `sqlite:///` URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str | None = None) -> Iterator[None]:
    """Serialise a SQLite store's set-up (its migrations) and champion moves across processes."""
    import mlflow

    database = local_db(uri or mlflow.get_tracking_uri())
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock", timeout=300):
        yield


def connect(params: config.MlflowParams, root: Path) -> str:
    """Point MLflow's tracking and registry at the store; return its URI."""
    return connect_to(tracking_uri(params, root))


def connect_to(uri: str) -> str:
    """`connect` for a store given by its URI (a server that does not answer fails fast)."""
    import mlflow

    if is_server(uri):
        for name, value in SERVER_RETRIES.items():
            os.environ.setdefault(name, value)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client_for(uri: str):
    """An MlflowClient on the store at `uri`, its registry included (not the process's)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_text(client, run_id: str, path: str) -> str | None:
    """A run's artifact as text; None when the store has no such run or artifact."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        try:
            return Path(client.download_artifacts(run_id, path, folder)).read_text()
        except (mlflow.exceptions.MlflowException, OSError):
            return None


@cli.first_import("mlflow and its store")
def use_store(params: config.MlflowParams, root: Path | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    import mlflow

    root = root or repo_root()
    overridden = bool(os.environ.get(TRACKING_URI_ENV))  # read first: set_tracking_uri sets it
    uri = connect(params, root)
    database = local_db(uri)
    with store_lock(uri):
        if database is not None:  # WAL: readers (the UI) and one writer at once; it persists
            with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
        experiment = mlflow.get_experiment_by_name(params.experiment)
        location = None if overridden else artifact_location(params, root)
        if experiment is None:
            # Left to MLflow, artifacts would go to ./mlruns in the stage's working folder: under
            # `dvc exp run --temp` a copy DVC deletes. Beside a SQLite store, None for a server.
            beside = database and artifact_location(params, database.parent)
            experiment_id = mlflow.create_experiment(
                params.experiment, artifact_location=location or beside
            )
        else:
            experiment_id = experiment.experiment_id
            if location and experiment.artifact_location != location:
                raise TrackingError(
                    f"{uri} keeps artifacts in {experiment.artifact_location}, not in this "
                    f"repo's {location}: the repo was moved or copied; run `make relocate` "
                    "(python -m pipeline.tools.relocate) to point the store here"
                )
    log.info("tracking to %s, experiment %r", uri, params.experiment)
    return experiment_id


@contextlib.contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """End the active run as KILLED, never left RUNNING, when the stage is interrupted."""
    import mlflow

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
    import mlflow

    client = mlflow.MlflowClient()
    closed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
        host, pid = (run.data.tags.get(f"pipeline.{key}", "") for key in ("host", "pid"))
        if host == socket.gethostname() and pid.isdigit() and not processes.process_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
            log.warning("run %s was left RUNNING by a process that died; marked KILLED", closed[-1])
    return closed
