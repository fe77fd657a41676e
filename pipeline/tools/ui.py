"""`make ui`: MLflow's UI on this repo's store, with the link to the training runs.

The link opens MLflow 3's "Model training" mode (`workflowType=machine_learning`, not GenAI) in a
shared view (`viewStateShareKey`, as the UI's Share button makes): the params that differ between
the runs and the headline metrics. `mlflow ui` does not stop its web server's child processes on
SIGTERM, so it runs in a process group of its own, which Ctrl-C or SIGTERM here stops whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pipeline.params.config as config
import pipeline.tracking.store as tracking
from pipeline.runtime import cli, ports, processes

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15
# MLflow's UI reads a shared view of the runs table from the experiment tag with this prefix and
# the key in the link (the constants `mlflow.sharedViewState.` and `viewStateShareKey` of its
# JavaScript; MLflow's Python API has no call for views). One key: each start rewrites it.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "pipeline-training-runs"
HEADLINE_METRICS = ("test_accuracy", "validation_accuracy")
MAX_PARAM_COLUMNS = 10  # a search varies a few; more would push the metrics off the screen


def training_runs_url(base: str, experiment_id: str, view: bool = False) -> str:
    """The experiment's runs in MLflow's "Model training" mode, in the shared view if asked."""
    link = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return link + (f"&viewStateShareKey={VIEW_KEY}" if view else "")


def varying_params(params_of_runs: list[dict[str, str]]) -> list[str]:
    """The params whose values differ between runs (one that some runs lack counts), sorted."""
    logged = [params for params in params_of_runs if params]  # a run that failed before logging
    keys = sorted({key for params in logged for key in params})
    return [key for key in keys if len({params.get(key) for params in logged}) > 1]


def view_state(params: list[str]) -> dict:
    """The runs table's columns as MLflow's UI names them: model, params, headline metrics."""
    columns = ["attributes.`Models`"]
    columns += [f"params.`{key}`" for key in params[:MAX_PARAM_COLUMNS]]
    columns += [f"metrics.`{name}`" for name in HEADLINE_METRICS]
    return {"selectedColumns": columns}


def share_view(client, experiment_id: str) -> bool:
    """Write the shared view of the newest thousand runs as the experiment tag the link names;
    False when the store refuses (a tracking server where this user may only read)."""
    import mlflow

    try:
        runs = client.search_runs([experiment_id], max_results=1000)
        state = view_state(varying_params([run.data.params for run in runs]))
        client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + VIEW_KEY, json.dumps(state))
    except mlflow.exceptions.MlflowException as error:
        log.warning("no params and metrics view (%s): the link shows the default columns",
                    str(error).splitlines()[0])  # fmt: skip
        return False
    return True


def run(params: config.Params, host: str, port: int) -> int:
    """Run the UI until Ctrl-C or SIGTERM; return its exit code."""
    store_uri = tracking.tracking_uri(params.mlflow, tracking.repo_root())
    on_server = store_uri.startswith(("http://", "https://"))  # MLFLOW_TRACKING_URI names one
    if not on_server:
        ports.check_free(host, port, "make ui")  # before the store: seconds sooner, one line
    experiment_id = tracking.use_store(params.mlflow)  # the experiment exists, even if empty
    view = share_view(tracking.client_for(store_uri), experiment_id)
    if on_server:
        url = training_runs_url(store_uri, experiment_id, view)
        log.info("the store is the tracking server %s: its training runs are at %s", store_uri, url)
        return 0
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow, "ui", "--backend-store-uri", store_uri, "--host", host, "--port", str(port)]
    environment = os.environ | tracking.NO_SERVER_JOBS
    process = subprocess.Popen(command, env=environment, start_new_session=True)
    url = training_runs_url(f"http://{host}:{port}", experiment_id, view)
    log.info(
        "MLflow UI on %s: the training runs, their params and accuracy, are at %s", store_uri, url
    )
    cli.unwind_on_signals()
    try:
        return process.wait()
    except KeyboardInterrupt:  # SIGTERM, then SIGKILL after STOP_TIMEOUT_S, to its whole group
        processes.stop_group(process.pid, STOP_TIMEOUT_S)
        return 0 if process.wait() in (0, -signal.SIGTERM) else 1


ARGUMENTS = {
    "--host": {"default": "127.0.0.1", "help": "address to bind (%(default)s)"},
    "--port": {"type": int, "default": 5000, "help": "port (%(default)s)"},
}


def main(argv: list[str] | None = None) -> None:
    expected = (tracking.TrackingError, ports.PortUnavailable)
    cli.run_command(run, argv, __doc__, ARGUMENTS, expected, config.load_params_or_exit)


if __name__ == "__main__":
    main()
