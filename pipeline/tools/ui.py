"""`make ui`: MLflow's UI on this repo's store, with the link to the training runs.

    python -m pipeline.tools.ui [--host HOST] [--port PORT] [--params params.yaml]

MLflow 3's UI opens an experiment in its GenAI mode (traces, token usage); the printed link adds
`workflowType=machine_learning`, which opens "Model training": the runs, their charts, models.
MLflow's job runner (huey consumer processes for GenAI jobs this project never runs) is
switched off with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false. `mlflow ui` runs its web server as
child processes, which it does not stop when it is sent SIGTERM, so it is started in a process
group of its own, and Ctrl-C or SIGTERM here stops the whole group.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pipeline.params.config as config
import pipeline.tracking.store as tracking
from pipeline.runtime import processes
from pipeline.runtime.cli import setup_logging, unwind_on_signals

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15


def training_runs_url(host: str, port: int, experiment_id: str) -> str:
    """The experiment's runs in MLflow's "Model training" mode."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def command(store_uri: str, host: str, port: int) -> list[str]:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [mlflow, "ui", "--backend-store-uri", store_uri, "--host", host, "--port", str(port)]


def stop(process: subprocess.Popen) -> int:
    """Stop the UI's process group (SIGTERM, SIGKILL after STOP_TIMEOUT_S); its exit code."""
    processes.stop_group(process.pid, STOP_TIMEOUT_S)
    return process.wait()


def run(params: config.Params, host: str, port: int) -> int:
    """Run the UI until Ctrl-C or SIGTERM; return its exit code."""
    experiment_id = tracking.use_store(params.mlflow)  # the experiment exists, even if empty
    store_uri = tracking.tracking_uri(params.mlflow, tracking.repo_root())
    if store_uri.startswith(("http://", "https://")):  # MLFLOW_TRACKING_URI names a server
        log.info(
            "the store is the tracking server %s: its training runs are at %s",
            store_uri,
            f"{store_uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
            "?workflowType=machine_learning",
        )
        return 0
    environment = os.environ | tracking.NO_SERVER_JOBS
    process = subprocess.Popen(
        command(store_uri, host, port), env=environment, start_new_session=True
    )
    log.info(
        "MLflow UI on %s: the training runs are at %s",
        store_uri,
        training_runs_url(host, port, experiment_id),
    )
    unwind_on_signals()
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 0 if stop(process) in (0, -signal.SIGTERM) else 1


def main(argv: list[str] | None = None) -> None:
    parser = config.params_parser(__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=5000, help="port (%(default)s)")
    args = parser.parse_args(argv)
    params = config.load_params_or_exit(args.params)
    setup_logging()
    try:
        code = run(params, args.host, args.port)
    except tracking.TrackingError as error:
        raise SystemExit(f"error: {error}") from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
