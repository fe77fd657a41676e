"""`python -m pipeline.search.tune` end to end: two workers, one study in a real PostgreSQL.

One worker is killed mid-trial and started again; the study's budget is spent with no point run
twice, every completed trial is a DVC experiment and an MLflow run, and the best one applies.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from pipeline.runtime import processes
from pipeline.team import postgres

from .repos import environment, postgres_missing, run, tiny_repo
from .servers import free_port, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.heavy,
    pytest.mark.skipif(bool(postgres_missing()), reason=postgres_missing() or "-"),
]
STUDY = "search"
BUDGET = 4


@pytest.fixture(scope="module")
def storage():
    """A PostgreSQL database for the study, in a cluster of the test's own."""
    folder = Path(tempfile.mkdtemp(prefix="mnist-lstm-tune-"))
    folder.chmod(0o755)  # reachable by the `postgres` user
    cluster = postgres.PostgresCluster(folder / "postgres", free_port())
    try:
        cluster.init()
        cluster.start()
        cluster.create_database("optuna")
        yield cluster.url("optuna")
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tiny_repo(tmp_path_factory.mktemp("tune"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tune"] |= {"study": STUDY, "trials": BUDGET, "space": {
        "train.learning_rate": {"kind": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "model.num_units": {"kind": "choice", "choices": [4, 8]},
    }}  # fmt: skip
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "the search"], repo)
    return repo  # never reproduced: the workers run `dvc repro preprocess` before any trial


def start_worker(repo: Path, storage: str, log: Path) -> subprocess.Popen:
    with log.open("a") as output:
        return subprocess.Popen([sys.executable, "-m", "pipeline.search.tune"], cwd=repo,
                                env=environment(OPTUNA_STORAGE=storage),
                                stdout=output, stderr=output)  # fmt: skip


def wait_for_running_trial(study, worker: subprocess.Popen, timeout: float = 300) -> int:
    """The number of a RUNNING trial of this worker, once it has one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("pid") == worker.pid and trial.params:
                return trial.number
        time.sleep(0.5)
    raise TimeoutError("the worker started no trial")


def trial_processes(number: int) -> list[int]:
    """The pids of processes (dvc, the stages) working on trial `number` of the study."""
    marks = {"PIPELINE_OPTUNA_STUDY": STUDY, "PIPELINE_OPTUNA_TRIAL": str(number)}

    def matching(cmdline: list[str], environ) -> bool:
        found = environ()
        return all(found.get(key) == value for key, value in marks.items())

    return processes.processes(matching)


def clone_state(repo: Path) -> tuple[str, str]:
    """The clone's checked-out branch and its changes to tracked files."""
    branch = run(["git", "symbolic-ref", "-q", "HEAD"], repo, check=False).stdout.strip()
    changes = run(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout.strip()
    return branch or "a detached HEAD", changes


def test_two_workers_spend_the_budget_once_each_point_and_the_best_applies(repo, storage, tmp_path):
    study = None
    log = tmp_path / "workers.log"
    before = clone_state(repo)
    assert before[0].startswith("refs/heads/") and before[1] == ""
    first, second = (start_worker(repo, storage, log) for _ in range(2))
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        deadline = time.monotonic() + 120
        while study is None and time.monotonic() < deadline:
            try:
                study = optuna.load_study(study_name=STUDY, storage=storage)
            except KeyError:
                time.sleep(0.5)
        killed = wait_for_running_trial(study, first)
        # its dvc exp run is working (it may first wait for the other worker's start lock)
        assert wait_until(lambda: trial_processes(killed), 120, interval=0.5)
        time.sleep(2)
        assert trial_processes(killed)
        first.send_signal(signal.SIGKILL)  # a worker dies mid-trial ...
        first.wait(timeout=30)
        assert wait_until(
            lambda: not trial_processes(killed), 120, interval=0.5
        )  # ... and its trial ends with it
        assert clone_state(repo) == before  # leaving the clone as it was
        restarted = start_worker(repo, storage, log)  # ... and is started again
        assert restarted.wait(timeout=900) == 0, log.read_text()
        assert second.wait(timeout=900) == 0, log.read_text()
    finally:
        for worker in (first, second):
            if worker.poll() is None:
                worker.kill()
    trials = {trial.number: trial for trial in study.get_trials()}
    assert trials[killed].state == TrialState.FAIL
    assert trials[killed].user_attrs["fail_reason"] == "its worker died"
    over = [trial for number, trial in trials.items() if number >= BUDGET]
    assert all(trial.user_attrs["fail_reason"].startswith("over budget") for trial in over)
    done = [trial for trial in trials.values() if trial.state == TrialState.COMPLETE]
    outcomes = "; ".join(f"{n} {t.state.name} {t.user_attrs.get('fail_reason', '')}"
                         for n, t in sorted(trials.items()))  # fmt: skip
    assert len(done) + 1 == BUDGET, f"{outcomes}\n{log.read_text()}"
    assert clone_state(repo) == before
    points = [tuple(sorted(trial.params.items())) for trial in done]
    assert len(set(points)) == len(points)  # no point run twice

    listed = run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    store = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    for trial in done:
        assert trial.user_attrs["dvc_experiment"] == f"{STUDY}-{trial.number}" in listed
        tags = client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags
        assert (tags["optuna.study"], tags["optuna.trial"]) == (STUDY, str(trial.number))

    best = study.best_trial
    assert f"best trial {best.number}" in log.read_text()
    run(["dvc", "exp", "apply", best.user_attrs["dvc_experiment"]], repo)
    applied = yaml.safe_load((repo / "params.yaml").read_text())
    assert applied["train"]["learning_rate"] == pytest.approx(best.params["train.learning_rate"])
    assert applied["model"]["num_units"] == best.params["model.num_units"]
    run_info = json.loads((repo / "models/mlflow_run.json").read_text())
    assert run_info["run_id"] == best.user_attrs["mlflow_run_id"]

    # the registry holds only trials that beat the champion when they were scored (two scored
    # at once with no champion yet may both register), never one version per trial regardless
    versions = client.search_model_versions("name='mnist-lstm'")
    scores = {int(v.version): client.get_run(v.run_id).data.metrics["test_accuracy"]
              for v in versions}  # fmt: skip
    assert 1 <= len(versions) <= len(done)  # no baseline run: only improvements
    champion = client.get_model_version_by_alias("mnist-lstm", "champion")
    assert scores[int(champion.version)] == max(scores.values())
