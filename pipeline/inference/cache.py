"""An MLflow model URI as a local model folder, so that the servers answer without MLflow.

A child process with MLflow (`python -m pipeline.inference.cache URI --store STORE`) pins an
alias to its version and copies its files once into `.serve/models/`. For a SQLite store the
answer is remembered with the state of the store's files (`store_state`, read after a checkpoint
of our own, `settle`, before MLflow is asked): while that state is unchanged no alias can have
moved, so the next start needs no MLflow; evaluate leaves the champion's answer (`prepare`) for
the first start after `dvc repro`. A tracking server is always asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pipeline.params.config as config
import pipeline.runtime.processes as processes
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
from pipeline.data.files import read_json, write_json
from pipeline.inference.integrity import HASH_TAG, ModelError, onnx_file, verify
from pipeline.runtime import cli

log = logging.getLogger(__name__)

CACHE_DIR = ".serve"  # at the repo root; git- and DVC-ignored
ANSWERS = "resolved.json"  # model URI and store → the local folder, with the store's state


def store_state(store: str) -> list[list[int]] | None:
    """Size, mtime and inode of a SQLite store's file and non-empty log; None for a server."""
    database = tracking.local_db(store)
    if database is None:
        return None
    state = []
    for path in (database, Path(f"{database}-wal")):
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            if path == database or stat.st_size:
                state.append([stat.st_size, stat.st_mtime_ns, stat.st_ino])
    return state


def settle(store: str) -> None:
    """Checkpoint a SQLite store (as its last connection's close would), the log emptied; best
    effort: a store a writer holds, or this user may not write, keeps its log."""
    database = tracking.local_db(store)
    if database is None or not database.is_file():
        return
    with contextlib.suppress(sqlite3.Error):
        uri = f"{database.resolve().as_uri()}?mode=rw"  # never creates a missing store
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _place(model_uri: str, params: config.Params) -> tuple[str, Path, str]:
    """The store's URI, the folder of copies, and the answer's key in it."""
    root = tracking.repo_root()
    store = tracking.tracking_uri(params.mlflow, root)
    return store, root / CACHE_DIR, f"{store} {model_uri}"


def resolve(model_uri: str, params: config.Params) -> tuple[str, Path, str]:
    """What `model_uri` names (`models:/name/<version>` for an alias), the local folder of its
    files and its registered ONNX sha256 ("" if none); a local path as it is."""
    if Path(model_uri).exists():
        return model_uri, Path(model_uri), ""
    store, cache, key = _place(model_uri, params)
    settle(store)
    state = store_state(store)  # before MLflow is asked: a write after it changes the state
    remembered = _answers(cache).get(key)
    if remembered and remembered["state"] == state and Path(remembered["path"]).is_dir():
        log.info("%s is %s (store unchanged)", model_uri, remembered["pinned"])
        return remembered["pinned"], Path(remembered["path"]), remembered.get("sha256", "")
    answer = _resolve_in_child(model_uri, store, cache)
    if state is not None:
        write_json(cache / ANSWERS, _answers(cache) | {key: answer | {"state": state}})
    log.info("%s is %s", model_uri, answer["pinned"])
    return answer["pinned"], Path(answer["path"]), answer["sha256"]


def prepare(model_uri: str, params: config.Params) -> None:
    """Resolve and copy `model_uri` now, in a process with MLflow (evaluate, after its last
    write); a failure only costs the next start its MLflow child: logged, never raised."""
    store, cache, key = _place(model_uri, params)
    settle(store)  # the stage's writes are all in: record a state that its exit cannot change
    state = store_state(store)
    if state is None:
        return  # a tracking server: asked at every start anyway
    try:
        answer = copied(model_uri, store, cache) | {"state": state}
        write_json(cache / ANSWERS, _answers(cache) | {key: answer})
    except (ModelError, OSError) as error:
        log.warning(
            "%s not copied for the servers (they will copy it at start): %s", model_uri, error
        )


def _answers(cache: Path) -> dict:
    try:
        return read_json(cache / ANSWERS)
    except (OSError, ValueError):
        return {}


def _resolve_in_child(model_uri: str, store: str, cache: Path) -> dict:
    """Run `main` below in a new interpreter; its last line of output is the answer."""
    environment = os.environ | {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    command = child_command(model_uri, store, cache)
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        reason = processes.failure_reason(result.stderr, f"exit code {result.returncode}")
        raise ModelError(reason.removeprefix("error: "))
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_command(model_uri: str, store: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", __name__, model_uri, "--store", store, "--cache", str(cache)]


# --- the child: MLflow resolves and copies ---------------------------------------------------


def pinned(model_uri: str) -> tuple[str, str, str]:
    """The pinned URI (an alias's version), the version's source and run, its ONNX sha256 or ""."""
    import mlflow

    try:
        version = registry.registered_version(mlflow.MlflowClient(), model_uri)
    except mlflow.exceptions.MlflowException as error:
        raise ModelError(f"cannot load model {model_uri}: {str(error).splitlines()[0]}") from None
    if version is None:  # a run's or a logged model's URI (models:/m-<id>): already unique
        return model_uri, model_uri, ""
    identity = f"{version.source} {version.run_id}"
    return f"models:/{version.name}/{version.version}", identity, version.tags.get(HASH_TAG, "")


def copied(model_uri: str, store: str, cache: Path) -> dict:
    """Pin `model_uri`, copy its files into `cache` unless they are there; what it resolved to."""
    import mlflow

    tracking.connect_to(store)
    pinned_uri, identity, sha256 = pinned(model_uri)
    folder = cache / "models" / hashlib.sha256(f"{store} {identity}".encode()).hexdigest()[:20]
    if not (folder / "MLmodel").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".copy-"))
        try:
            downloaded = mlflow.artifacts.download_artifacts(pinned_uri, dst_path=str(staging))
            Path(downloaded).rename(folder)  # the staging folder, or the model folder in it
        except (mlflow.exceptions.MlflowException, OSError) as error:
            if not (folder / "MLmodel").is_file():  # not another server's copy, made meanwhile
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ModelError(f"cannot load model {pinned_uri}: {message}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    verify(pinned_uri, onnx_file(str(folder)), sha256)
    return {"pinned": pinned_uri, "path": str(folder), "sha256": sha256}


def follow_command(model_uri: str, params: config.Params, seconds: float) -> list[str]:
    """The child that says what `model_uri` names whenever that changes (`run` below)."""
    store, cache, _ = _place(model_uri, params)
    return child_command(model_uri, store, cache) + ["--follow-seconds", str(seconds)]


def run(model_uri: str, store: str, cache: Path, follow_seconds: float | None = None) -> None:
    """`copied`'s answer as one JSON line on stdout; with `follow_seconds`, that answer (or
    {"error": ...}) again whenever it changes, until the parent is gone."""
    if not follow_seconds:
        sys.stdout.write(json.dumps(copied(model_uri, store, cache)) + "\n")
        return
    tracking.connect_to(store)
    parent, last = os.getppid(), None
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        while os.getppid() == parent:
            try:
                answer = copied(model_uri, store, cache)
            except (ModelError, tracking.TrackingError) as error:
                answer = {"error": str(error)}
            if answer != last:
                sys.stdout.write(json.dumps(answer) + "\n")
                sys.stdout.flush()
                last = answer
            time.sleep(follow_seconds)


ARGUMENTS = {
    "model_uri": {},
    "--store": {"required": True, "help": "the tracking store's URI"},
    "--cache": {"type": Path, "required": True, "help": "the folder of copies"},
    "--follow-seconds": {"type": float, "help": "say it again whenever it moves"},
}


def main(argv: list[str] | None = None) -> None:
    description = "resolve and copy an MLflow model (servers)"
    cli.run_command(run, argv, description, ARGUMENTS, (ModelError, tracking.TrackingError))


if __name__ == "__main__":
    main()
