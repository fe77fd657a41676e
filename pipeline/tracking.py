"""Where runs are tracked (the repo's SQLite store by default) and the lineage tags they carry."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import mlflow

from pipeline import config

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def tracking_uri(params: config.MlflowParams, root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite file `tracking_db` at the repo root."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{(root / params.tracking_db).resolve()}"


def artifact_location(params: config.MlflowParams, root: Path) -> str:
    """Artifacts sit in a folder beside the store, whatever folder the stage runs in."""
    return (root / params.artifacts_dir).resolve().as_uri()


def use_store(params: config.MlflowParams, root: Path | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    root = root or config.repo_root()
    overridden = bool(os.environ.get(TRACKING_URI_ENV))  # read first: set_tracking_uri sets it
    uri = tracking_uri(params, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(params.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = None if overridden else artifact_location(params, root)
        experiment_id = mlflow.create_experiment(params.experiment, artifact_location=location)
    log.info("tracking to %s, experiment %r", uri, params.experiment)
    return experiment_id


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params → {"train.learning_rate": "0.001", ...}; lists become JSON."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def git_commit() -> str | None:
    """HEAD of the repository the stage runs in (the baseline commit in a DVC experiment)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def lineage_tags(data_hashes: dict[str, str]) -> dict[str, str]:
    """Tags that lead from a run back to its code, DVC experiment and data."""
    tags = {f"data.{name}_sha256": digest for name, digest in data_hashes.items()}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    # DVC sets these while running `dvc exp run` (dvc/repo/experiments/queue/base.py).
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags
