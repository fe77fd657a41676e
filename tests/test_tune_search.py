"""`python -m pipeline.search.tune` end to end: workers stopped and started, one study."""

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

from .support import (
    clone_state,
    environment,
    free_port,
    postgres_missing,
    run,
    tiny_repo,
    wait_until,
)

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


def start_worker(repo: Path, storage: str, log: Path, *arguments: str) -> subprocess.Popen:
    with log.open("a") as output:
        return subprocess.Popen([sys.executable, "-m", "pipeline.search.tune", *arguments],
                                cwd=repo, env=environment(OPTUNA_STORAGE=storage),
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


def trial_processes(number: int | None = None) -> list[int]:
    """The pids working on trial `number` of the study (any trial: None)."""
    marks = {"PIPELINE_OPTUNA_STUDY": STUDY}
    if number is not None:
        marks["PIPELINE_OPTUNA_TRIAL"] = str(number)

    def matching(cmdline: list[str], environ) -> bool:
        found = environ()
        return all(found.get(key) == value for key, value in marks.items())

    return processes.processes(matching)


def test_workers_stopped_and_started_spend_the_budget_once_each_point_and_the_best_applies(
    repo, storage, tmp_path
):
    study = None
    log = tmp_path / "workers.log"
    before = clone_state(repo)
    lines = before.splitlines()  # on a branch, no changes: only the "# branch.*" headers
    assert "# branch.head (detached)" not in lines and all(line[0] == "#" for line in lines)
    first = start_worker(repo, storage, log, "--workers", "2")
    others = []
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        deadline = time.monotonic() + 120
        while study is None and time.monotonic() < deadline:
            try:
                study = optuna.load_study(study_name=STUDY, storage=storage)
            except KeyError:
                time.sleep(0.5)
        stopped = wait_for_running_trial(study, first)
        assert wait_until(lambda: trial_processes(stopped), 120, interval=0.5)
        time.sleep(2)  # its dvc exp run is working
        first.send_signal(signal.SIGTERM)  # the command is stopped mid-trial ...
        assert first.wait(timeout=300) == 130, log.read_text()
        assert trial_processes() == []  # ... its workers' trials end with it ...
        assert clone_state(repo) == before  # ... leaving the clone as it was
        others = [start_worker(repo, storage, log) for _ in range(2)]  # two more machines
        assert [worker.wait(timeout=900) for worker in others] == [0, 0], log.read_text()
    finally:
        for worker in (first, *others):
            if worker.poll() is None:
                worker.kill()
    trials = {trial.number: trial for trial in study.get_trials()}
    outcomes = "; ".join(f"{n} {t.state.name} {t.user_attrs.get('fail_reason', '')}"
                         for n, t in sorted(trials.items()))  # fmt: skip
    reasons = {number: trial.user_attrs.get("fail_reason", "") for number, trial in trials.items()}
    interrupted = {number for number, reason in reasons.items() if reason.startswith("interrupted")}
    assert stopped in interrupted, outcomes
    over = [trial for number, trial in trials.items() if number >= BUDGET]
    assert all(trial.user_attrs["fail_reason"].startswith("over budget") for trial in over)
    done = [trial for trial in trials.values() if trial.state == TrialState.COMPLETE]
    assert len(done) + len(interrupted) == BUDGET, f"{outcomes}\n{log.read_text()}"
    assert clone_state(repo) == before
    points = [tuple(sorted(trial.params.items())) for trial in done]
    assert len(set(points)) == len(points)  # no point run twice

    listed = run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    store = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    for trial in done:
        experiment = f"{STUDY}-{trial.number}"
        assert trial.user_attrs["dvc_experiment"] == experiment in listed
        logged = client.get_run(trial.user_attrs["mlflow_run_id"]).data
        tags = (logged.tags["optuna.study"], logged.tags["optuna.trial"])
        assert tags == (STUDY, str(trial.number))
        assert logged.tags["dvc.exp_name"] == experiment  # each ran its own stash entry
        assert float(logged.params["train.learning_rate"]) == pytest.approx(
            trial.params["train.learning_rate"]
        )
        assert int(logged.params["model.num_units"]) == trial.params["model.num_units"]

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
    scores = {int(v.version): client.get_run(v.run_id).data.metrics["validation_accuracy"]
              for v in versions}  # fmt: skip
    assert 1 <= len(versions) <= len(done)  # no baseline run: only improvements
    champion = client.get_model_version_by_alias("mnist-lstm", "champion")
    assert scores[int(champion.version)] == max(scores.values())
