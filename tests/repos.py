"""Scratch copies of this repository for end-to-end tests: tracked files, tiny params, git."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.runtime.processes import environment_without

from .conftest import GIT_IDENTITY, REPO, make_mnist, tiny_settings, write_idx_folder

BIN = Path(sys.executable).parent


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without MLflow's and DVC's variables, tools on PATH."""
    env = environment_without("MLFLOW_", "DVC_")
    return env | {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "DVC_NO_ANALYTICS": "1"} \
        | GIT_IDENTITY | extra  # fmt: skip


def run(
    command: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command in a scratch repo; a failure fails the test with its output."""
    result = subprocess.run(command, cwd=cwd, env=env or environment(), capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def copy_repo(destination: Path) -> Path:
    """The project's tracked files, as a fresh clone has them (working-tree content)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in listed:
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def tiny_repo(base: Path, name: str = "repo") -> Path:
    """A git repo of this project with tiny params and a local IDX mirror, committed."""
    mnist = make_mnist()
    mirror = write_idx_folder(base / "mirror", mnist, gzipped=False)
    repo = copy_repo(base / name)
    params = tiny_settings(yaml.safe_load((repo / "params.yaml").read_text()), mirror, mnist)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    return repo


def postgres_missing() -> str:
    """Why the PostgreSQL tests cannot run here ("" when they can): no binaries."""
    from pipeline.team import postgres

    try:
        postgres.binary("initdb")
    except postgres.PostgresError as error:
        return str(error)
    return ""


def wait_for_queue(repo: Path, timeout: float = 900) -> str:
    """Poll `dvc queue status` until nothing is queued or running; return the last status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not any(state in status for state in ("Queued", "Running")):
            return status
        time.sleep(2)
    pytest.fail(f"queue still busy after {timeout} s:\n{status}")


def client_for(repo: Path):
    """An MLflow client of the repo's own store, not the process defaults."""
    import mlflow

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
