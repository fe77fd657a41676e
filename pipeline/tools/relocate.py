"""`make relocate`: point the repo's SQLite store at its artifacts after the repo moved.

MLflow records absolute `file://` artifact locations (experiments, runs, logged models, model
versions), so a moved or copied clone's store still points into the old folder: loading a
registered model then fails with "No such artifact", and a copy would write new artifacts into
the original. This rewrites the old repo folder's prefix to this one's, in one transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

import pipeline.params.config as config
import pipeline.tracking.store as tracking
from pipeline.runtime import cli

log = logging.getLogger(__name__)

# Every column of MLflow's SQL schema that holds an artifact location (MLflow 3).
LOCATION_COLUMNS = [
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
]


class RelocateError(Exception):
    """The store cannot be relocated; the message says why."""


def old_root_uri(connection: sqlite3.Connection, params: config.MlflowParams) -> str:
    """`file:///old/repo/` from where the experiment says its artifacts are."""
    row = connection.execute(
        "SELECT artifact_location FROM experiments WHERE name = ?", (params.experiment,)
    ).fetchone()
    if row is None:
        raise RelocateError(f"the store has no experiment {params.experiment!r}: nothing to move")
    suffix = "/" + params.artifacts_dir.strip("/")
    if not row[0].startswith("file://") or not row[0].endswith(suffix):
        raise RelocateError(
            f"experiment {params.experiment!r} keeps artifacts in {row[0]}, "
            f"not in a repo folder's {params.artifacts_dir}"
        )
    return row[0].removesuffix(suffix) + "/"


def relocate(database: Path, params: config.MlflowParams, root: Path) -> dict[str, int]:
    """Rewrite old-prefix locations to `root`; return the rows changed per table.column."""
    if not database.is_file():
        raise RelocateError(f"no MLflow store at {database}")
    new_prefix = root.resolve().as_uri() + "/"
    changed = {}
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection, connection:
        old_prefix = old_root_uri(connection, params)
        if old_prefix == new_prefix:
            return {}
        for table, column in LOCATION_COLUMNS:
            cursor = connection.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                f"WHERE substr({column}, 1, ?) = ?",
                (new_prefix, len(old_prefix) + 1, len(old_prefix), old_prefix),
            )
            changed[f"{table}.{column}"] = cursor.rowcount
    log.info("store %s: artifact locations moved from %s to %s", database, old_prefix, new_prefix)
    return changed


def run(params: config.Params, params_file: str) -> None:
    """Point the repo's SQLite store at the folder of `params_file`; say what changed."""
    if os.environ.get(tracking.TRACKING_URI_ENV):
        raise RelocateError(
            f"{tracking.TRACKING_URI_ENV} is set: a server's store does not move with "
            "the repo; unset it to relocate the repo's SQLite store"
        )
    root = Path(params_file).resolve().parent
    database = tracking.local_db(tracking.tracking_uri(params.mlflow, root))
    changed = relocate(database, params.mlflow, root)
    if not changed:
        log.info("store %s already points at %s: nothing to change", database, root)
    for name, rows in changed.items():
        log.info("%s: %d rows", name, rows)


def main(argv: list[str] | None = None) -> None:
    expected = (RelocateError, sqlite3.Error)
    cli.run_command(run, argv, __doc__, {}, expected, config.load_params_or_exit)


if __name__ == "__main__":
    main()
