"""The search's study mechanics on Optuna's journal file, and one trial run by `dvc exp run`."""

import copy
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import optuna
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from pipeline.params import tools
from pipeline.search import tune as trials
from pipeline.tracking import store as tracking

from .support import REPO, clone_state, environment, run, tiny_repo, wait_until


def tune_params(raw_params: dict, storage: str, **changes) -> tools.ToolParams:
    raw = copy.deepcopy(raw_params)
    raw["tune"] |= {"storage": storage, "trials": 3} | changes
    return tools.parse_params(raw)


@pytest.fixture
def study(raw_params, tmp_path):
    tuned = tune_params(raw_params, str(tmp_path / "journal.log"))
    storage = trials.open_storage(trials.storage_url(tuned.tune, tmp_path))
    return tuned, storage, trials.load_study(tuned.tune, storage)


@pytest.fixture
def trials_run(monkeypatch) -> list[int]:
    """Trials without dvc and MLflow: the numbers of those run; trial 1 fails as a stage would."""
    numbers = []

    def run_trial(root, study, number, point):
        numbers.append(number)
        if number == 1:
            raise trials.TrialFailed("error: model.num_units = 0: must be at least 1")
        return trials.experiment_name(study, number)

    def read_result(study, number, metric, experiment):
        return trials.TrialResult(0.5 + number / 100, experiment, f"run-{number}")

    monkeypatch.setattr(trials, "run_trial", run_trial)
    monkeypatch.setattr(trials, "read_result", read_result)
    return numbers


def test_points_come_from_the_declared_space(study):
    params, _, optuna_study = study
    for _ in range(20):
        trial = optuna_study.ask()
        point = trials.suggest(trial, params.tune.space)
        optuna_study.tell(trial, 0.5)
        assert set(point) == set(params.tune.space)
        for name, dimension in params.tune.space.items():
            if dimension.kind == "choice":
                assert point[name] in dimension.choices
            else:
                assert dimension.low <= point[name] <= dimension.high


def test_a_point_already_run_or_running_is_found_as_a_duplicate(study):
    params, _, optuna_study = study
    first = optuna_study.ask()
    point = trials.suggest(first, params.tune.space)
    optuna_study.enqueue_trial(point)  # the same values, as a sampler may draw them again
    second = optuna_study.ask()
    assert trials.suggest(second, params.tune.space) == point
    assert trials.duplicate_of(optuna_study, second, second.params).number == first.number
    optuna_study.tell(first, 0.9)
    assert trials.duplicate_of(optuna_study, second, second.params).number == first.number
    assert trials.duplicate_of(optuna_study, first, {"other": 1}) is None


def test_a_worker_runs_trials_until_the_budget_is_spent_and_records_why_one_failed(
    study, trials_run, tmp_path
):
    params, storage, optuna_study = study
    points = [{"train.learning_rate": 0.002, "model.num_units": units, "train.iterations": 1500}
              for units in (64, 128, 192)]  # fmt: skip
    for point in points:  # points given by hand, a budget's worth: each counted once it runs
        optuna_study.enqueue_trial(point)
    trials.search(optuna_study, storage, params, tmp_path)
    assert trials_run == [0, 1, 2]
    done = optuna_study.get_trials()
    assert [trial.state for trial in done] == [TrialState.COMPLETE, TrialState.FAIL,
                                               TrialState.COMPLETE]  # fmt: skip
    assert [trial.params for trial in done] == points
    assert done[0].value == pytest.approx(0.5)
    assert done[0].user_attrs["dvc_experiment"] == f"{params.tune.study}-0"
    assert done[0].user_attrs["mlflow_run_id"] == "run-0"
    assert done[1].user_attrs["fail_reason"] == "error: model.num_units = 0: must be at least 1"
    trials.search(optuna_study, storage, params, tmp_path)  # the budget spent: nothing asked
    assert len(optuna_study.trials) == params.tune.trials and trials_run == [0, 1, 2]


def test_a_trial_asked_for_past_the_budget_is_failed_and_not_run(study, trials_run, tmp_path):
    params, _, optuna_study = study
    for _ in range(params.tune.trials - 1):
        optuna_study.tell(optuna_study.ask(), 0.1)
    optuna_study.ask()  # another worker's, the last of the budget
    late = optuna_study.ask()  # this worker's, asked for at the same moment
    with pytest.raises(trials.TrialFailed, match="over budget"):
        trials.objective(optuna_study, params, tmp_path)(late)
    assert trials_run == []
    assert optuna_study.trials[late.number].user_attrs["fail_reason"].startswith("over budget")


def test_a_trial_left_running_by_a_dead_worker_is_failed_with_its_reason(
    study, trials_run, tmp_path
):
    params, storage, optuna_study = study
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan = optuna_study.ask()
    orphan.set_user_attr("host", __import__("socket").gethostname())
    orphan.set_user_attr("pid", int(dead.stdout))
    alive = optuna_study.ask()
    alive.set_user_attr("host", __import__("socket").gethostname())
    alive.set_user_attr("pid", os.getpid())
    trials.search(optuna_study, storage, params, tmp_path)  # a worker that starts
    done = optuna_study.get_trials()
    assert [trial.state for trial in done] == [TrialState.FAIL, TrialState.RUNNING,
                                               TrialState.COMPLETE]  # fmt: skip
    assert done[orphan.number].user_attrs["fail_reason"] == "its worker died"
    assert trials_run == [2]


@pytest.mark.slow  # waits out a grace period twice (~7 s)
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")  # this test's own ask()
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_database_study_beats_for_its_trial_and_fails_one_whose_worker_stopped_beating(
    raw_params, tmp_path, monkeypatch, caplog
):
    params = tune_params(raw_params, "", trials=2)
    storage = trials.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1,
                                grace_period=2)  # fmt: skip
    optuna_study = trials.load_study(params.tune, storage)
    study_id = storage.get_study_id_from_name(params.tune.study)
    elsewhere = optuna_study.ask()  # a worker on another machine, which beat once and died
    elsewhere.set_user_attr("host", "another-machine")
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, 0))
    time.sleep(3.2)  # past the grace period (SQLite's clock counts seconds)

    def run_trial(root, study, number, point):
        time.sleep(3.2)  # past the grace period again, but beating
        optuna.storages.fail_stale_trials(optuna_study)
        assert optuna_study.trials[number].state == TrialState.RUNNING
        return trials.experiment_name(study, number)

    monkeypatch.setattr(trials, "run_trial", run_trial)
    monkeypatch.setattr(trials, "read_result", lambda *args: trials.TrialResult(0.9, args[3], "r"))
    trials.search(optuna_study, storage, params, tmp_path)
    assert [trial.state for trial in optuna_study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "trial 0: its worker on another-machine stopped sending heartbeats" in caplog.text


def test_a_trial_is_scored_only_from_a_run_of_its_own_experiment(store):
    import mlflow

    tracking.connect_to(f"sqlite:///{store / 'mlflow.db'}")
    tags = {"optuna.study": "search", "optuna.trial": "1"}
    with mlflow.start_run(tags=tags | {"dvc.exp_name": "search-2"}):  # DVC's stash race
        mlflow.log_metric("test_accuracy", 0.9)
    with pytest.raises(trials.TrialFailed, match="no finished MLflow run of trial 1"):
        trials.read_result("search", 1, "test_accuracy", "search-1")
    with mlflow.start_run(tags=tags | {"dvc.exp_name": "search-1"}):
        mlflow.log_metric("test_accuracy", 0.8)
    assert trials.read_result("search", 1, "test_accuracy", "search-1").value == 0.8


@contextmanager
def dvc_lock_held(repo, seconds: float):
    """Another `dvc` holding the clone's lock for `seconds` (as another worker's, stashing)."""
    code = ("import sys, time\nfrom dvc.repo import Repo\nRepo(sys.argv[1]).lock.lock()\n"
            "print('held', flush=True)\ntime.sleep(float(sys.argv[2]))\n")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(repo), str(seconds)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow  # real `dvc repro` and `dvc exp run` in a scratch repo
def test_workers_prepare_the_data_in_turn_wait_for_dvc_and_a_bad_point_fails_with_its_error(
    tmp_path,
):
    repo = tiny_repo(tmp_path)
    before = clone_state(repo)
    with ThreadPoolExecutor(2) as pool:  # two workers of a clone starting at once: no "is busy"
        list(pool.map(lambda _: trials.prepare_data(repo, repo / ".tune/prepare.lock"), range(2)))
    assert (repo / "dvc.lock").is_file()
    with dvc_lock_held(repo, 5), pytest.raises(trials.TrialFailed,  # not "Unable to acquire lock"
                                               match=r"error: .*model.num_units = 0"):  # fmt: skip
        trials.run_trial(repo, "study", 7, {"model.num_units": 0})
    listed = run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    assert "study-7" not in listed
    assert clone_state(repo) == before
    assert yaml.safe_load((repo / "params.yaml").read_text())["model"]["num_units"] == 8


WORKER = """\
import sys
from pathlib import Path
from pipeline.runtime.cli import unwind_on_signals
from pipeline.search import tune as trials
unwind_on_signals()
try:
    trials.run_trial(Path(sys.argv[1]), "study", 3, {"train.learning_rate": 0.01})
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.slow  # real `dvc exp run` in a scratch repo, twice
@pytest.mark.parametrize("moment", ["as dvc starts", "in a stage"])
def test_a_trial_interrupted_ends_its_experiment_and_leaves_the_clone_as_it_was(tmp_path, moment):
    repo = tiny_repo(tmp_path)
    before = clone_state(repo)
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(repo)], cwd=REPO,
                              env=environment(), process_group=0)  # fmt: skip
    try:
        assert wait_until(lambda: psutil.Process(worker.pid).children(), 60)
        (dvc,) = psutil.Process(worker.pid).children()
        # once it runs `dvc` (the forked child moves to its own group before it execs)
        assert wait_until(lambda: "--wait-for-lock" in dvc.cmdline(), 30, interval=0.01)
        if moment == "in a stage":
            assert wait_until(lambda: trials.stages_of(dvc.pid), 120, interval=0.2)
        assert os.getpgid(dvc.pid) == dvc.pid  # a group of its own: no Ctrl-C reaches it
        descendants = [dvc, *dvc.children(recursive=True)]
        os.killpg(worker.pid, signal.SIGINT)  # Ctrl-C in a terminal: the worker's group
        assert worker.wait(timeout=120) == 130
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert not [process for process in descendants if process.is_running()]
    assert clone_state(repo) == before
    assert "study-3" not in run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
