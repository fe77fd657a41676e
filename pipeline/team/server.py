"""`make server` / `make server-stop`: an MLflow tracking server for a team, on PostgreSQL.

    python -m pipeline.team.server start [--auth]  # PostgreSQL (own, unless given) + mlflow server
    python -m pipeline.team.server stop            # both, by the pids they wrote; data kept
    python -m pipeline.team.server status

The store: MLFLOW_BACKEND_STORE_URI, else our own PostgreSQL cluster (docs/team.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pipeline.params.tools as tools
import pipeline.tracking.store as tracking
from pipeline.runtime import cli, processes
from pipeline.team.postgres import PostgresCluster, PostgresError

log = logging.getLogger(__name__)

BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"
ARTIFACTS_ENV = "MLFLOW_ARTIFACTS_DESTINATION"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
START_TIMEOUT = 180.0  # seconds: a new PostgreSQL store runs all of MLflow's migrations first
STOP_TIMEOUT = 20.0


class ServerError(Exception):
    """The server cannot start or stop; the message says why and what to do."""


class State:
    """Where a server keeps what it owns: `team.state_dir` under the repo (or absolute)."""

    def __init__(self, params: tools.TeamParams, root: Path) -> None:
        self.folder = (root / params.state_dir).resolve()
        self.cluster = PostgresCluster(self.folder / "postgres", params.postgres_port)
        self.pid_file = self.folder / "mlflow-server.pid"
        self.log_file = self.folder / "logs" / "mlflow-server.log"
        self.artifacts = os.environ.get(ARTIFACTS_ENV) or str(self.folder / "artifacts")
        self.auth_config = self.folder / "basic_auth.ini"
        self.secret_key = self.folder / "flask-secret-key"

    def server_pid(self) -> int | None:
        """The pid in the pid file, if that process is alive (not a zombie)."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text())
            return pid if processes.process_alive(pid) else None
        return None


def url(params: tools.TeamParams) -> str:
    return f"http://{params.host}:{params.port}"


def healthy(base_url: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
            return response.status == 200
    return False


def backend_uri(state: State) -> str:
    """MLFLOW_BACKEND_STORE_URI, or the project's own cluster (made and started if need be)."""
    if os.environ.get(BACKEND_ENV):
        return os.environ[BACKEND_ENV]
    state.cluster.init()
    state.cluster.start()
    state.cluster.create_database("mlflow")
    return state.cluster.url("mlflow")


def _secret(path: Path) -> str:
    """A value made once at random and kept beside the server, readable by its owner only."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def auth_environment(state: State) -> dict[str, str]:
    """MLflow's basic-auth app: its user store sits beside the tracking store."""
    if os.environ.get(BACKEND_ENV):
        database = f"sqlite:///{state.folder / 'basic_auth.db'}"
    else:
        state.cluster.create_database("mlflow_auth")
        database = state.cluster.url("mlflow_auth")
    # MLflow refuses to create its admin user without a password: it must come from the env.
    if not os.environ.get(ADMIN_PASSWORD_ENV) and not state.auth_config.exists():
        raise ServerError(f"basic auth needs {ADMIN_PASSWORD_ENV} set for its first start")
    state.auth_config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {database}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each request's password is checked with a slow hash (PBKDF2) and a training run makes
        # a hundred requests: a good check is cached, a changed password takes this long.
        "auth_cache_ttl_seconds = 60\n"
    )
    state.auth_config.chmod(0o600)  # it holds the database password
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(state.auth_config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or _secret(state.secret_key),
    }


def server_command(params: tools.TeamParams, state: State, auth: bool) -> list[str]:
    mlflow_cli = Path(sys.executable).with_name("mlflow")  # this environment's, PATH or not
    command = [str(mlflow_cli), "server", "--host", params.host, "--port", str(params.port)]
    command += ["--workers", str(params.workers), "--serve-artifacts"]
    command += ["--artifacts-destination", state.artifacts]
    return [*command, "--app-name", "basic-auth"] if auth else command


def wait_until_up(process: subprocess.Popen, state: State, base_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            lines = state.log_file.read_text(errors="replace").strip().splitlines() or ["no output"]
            raise ServerError(f"mlflow server exited ({lines[-1]}); log: {state.log_file}")
        if healthy(base_url):
            return
        time.sleep(0.5)
    processes.stop_group(process.pid, STOP_TIMEOUT)
    raise ServerError(
        f"mlflow server did not answer within {START_TIMEOUT:g} s; log: {state.log_file}"
    )


def start(params: tools.TeamParams, root: Path, auth: bool = False) -> str:
    """Start PostgreSQL (if it is ours) and the MLflow server; return the server's URL."""
    state, base_url = State(params, root), url(params)
    if state.server_pid() and healthy(base_url):
        log.info("the MLflow server is already running at %s", base_url)
        return base_url
    if healthy(base_url):
        raise ServerError(f"something else answers on {base_url}: stop it or set team.port")
    state.log_file.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, BACKEND_ENV: backend_uri(state)}  # in the env, not in `ps`
    environment |= tracking.NO_SERVER_JOBS
    if auth:
        environment |= auth_environment(state)
    with state.log_file.open("ab") as server_log:
        process = subprocess.Popen(
            server_command(params, state, auth),
            cwd=root,
            env=environment,
            stdout=server_log,
            stderr=server_log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state.pid_file.write_text(f"{process.pid}\n")
    wait_until_up(process, state, base_url)
    where = (process.pid, base_url, " with basic auth" if auth else "", state.artifacts)
    log.info("MLflow server (pid %d) at %s%s; artifacts proxied to %s", *where)
    log.info("point the pipeline at it: export %s=%s", tracking.TRACKING_URI_ENV, base_url)
    return base_url


def stop(params: tools.TeamParams, root: Path) -> None:
    """Stop the MLflow server and, if it is ours, PostgreSQL; every stored thing is kept."""
    state = State(params, root)
    pid = state.server_pid()
    if pid:  # its process group: uvicorn and its workers
        processes.stop_group(pid, STOP_TIMEOUT)
        log.info("MLflow server (pid %d) stopped", pid)
    else:
        log.info("no MLflow server of this repo is running")
    state.pid_file.unlink(missing_ok=True)
    state.cluster.stop()


def status(params: tools.TeamParams, root: Path) -> bool:
    state = State(params, root)
    pid, up = state.server_pid(), healthy(url(params))
    answer = "answers" if up else "does not answer"
    log.info("MLflow server: %s", f"pid {pid}, {url(params)} {answer}" if pid else "not running")
    log.info("PostgreSQL (own cluster): %s", "running" if state.cluster.running() else "stopped")
    return bool(pid and up)


def run(params: tools.ToolParams, params_file: str, action: str, auth: bool) -> int:
    """Start, stop or report the team's server; the exit code (status: 1 unless it answers)."""
    root = Path(params_file).resolve().parent
    if action == "start":
        start(params.team, root, auth)
    elif action == "stop":
        stop(params.team, root)
    return 0 if action != "status" or status(params.team, root) else 1


ARGUMENTS = {
    "action": {"choices": ["start", "stop", "status"]},
    "--auth": {"action": "store_true", "help": f"basic auth (password: ${ADMIN_PASSWORD_ENV})"},
}


def main(argv: list[str] | None = None) -> None:
    expected = (ServerError, PostgresError, OSError)
    cli.run_command(run, argv, __doc__, ARGUMENTS, expected, tools.load_params_or_exit)


if __name__ == "__main__":
    main()
