"""The search's study mechanics on Optuna's journal file, and one trial run by `dvc exp run`."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from pipeline.params import config
from pipeline.runtime import cli as stage
from pipeline.search import trials as tune

from .conftest import REPO
from .repos import run, tiny_repo
from .servers import wait_until


def tune_params(params: config.Params, storage: str, **changes) -> config.Params:
    raw = params.model_dump(mode="json")
    raw["tune"] |= {"storage": storage, "trials": 3} | changes
    return config.parse_params(raw)


@pytest.fixture
def study(params, tmp_path):
    tuned = tune_params(params, str(tmp_path / "journal.log"))
    storage = tune.open_storage(tune.storage_url(tuned.tune, tmp_path))
    return tuned, storage, tune.load_study(tuned.tune, storage)


def test_the_space_is_validated_with_the_key_named(params):
    raw = params.model_dump(mode="json")
    raw["tune"]["space"] = {"train.learning_rat": {"kind": "float", "low": 0.1, "high": 1}}
    with pytest.raises(config.ConfigError, match="tune.space names no model or train param: "
                                                 "train.learning_rat"):  # fmt: skip
        config.parse_params(raw)
    raw["tune"]["space"] = {
        "train.learning_rate": {"kind": "float", "low": 0, "high": 1, "log": True}
    }
    with pytest.raises(config.ConfigError, match=r"tune.space.train.learning_rate.float"):
        config.parse_params(raw)


def test_points_come_from_the_declared_space(study):
    params, _, optuna_study = study
    for _ in range(20):
        trial = optuna_study.ask()
        point = tune.suggest(trial, params.tune.space)
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
    point = tune.suggest(first, params.tune.space)
    optuna_study.enqueue_trial(point)  # the same values, as a sampler may draw them again
    second = optuna_study.ask()
    assert tune.suggest(second, params.tune.space) == point
    assert tune.duplicate_of(optuna_study, second, second.params).number == first.number
    optuna_study.tell(first, 0.9)
    assert tune.duplicate_of(optuna_study, second, second.params).number == first.number
    assert tune.duplicate_of(optuna_study, first, {"other": 1}) is None


def test_a_spent_budget_stops_a_worker_without_asking(study, tmp_path):
    params, storage, optuna_study = study
    for _ in range(params.tune.trials):
        optuna_study.tell(optuna_study.ask(), 0.1)
    assert tune.run_one(optuna_study, storage, params, tmp_path) is False
    assert len(optuna_study.trials) == params.tune.trials


def test_a_trial_left_running_by_a_dead_worker_is_failed_with_its_reason(study):
    _, storage, optuna_study = study
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan = optuna_study.ask()
    orphan.set_user_attr("host", __import__("socket").gethostname())
    orphan.set_user_attr("pid", int(dead.stdout))
    alive = optuna_study.ask()
    alive.set_user_attr("host", __import__("socket").gethostname())
    alive.set_user_attr("pid", __import__("os").getpid())
    assert tune.fail_orphans(optuna_study, storage) == [orphan.number]
    trials = {trial.number: trial for trial in optuna_study.get_trials()}
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[orphan.number].user_attrs["fail_reason"] == "its worker died"
    assert trials[alive.number].state == TrialState.RUNNING


@pytest.mark.slow  # waits out a grace period twice (~7 s)
def test_a_database_study_fails_a_trial_whose_worker_elsewhere_stopped_beating(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}",
                                         heartbeat_interval=1, grace_period=2)  # fmt: skip
    optuna_study = optuna.create_study(study_name="search", storage=storage)
    trial = optuna_study.ask()
    trial.set_user_attr("host", "another-machine")
    with tune.heartbeat(storage, optuna_study, trial.number):
        time.sleep(3.2)  # past the grace period, but beating (SQLite's clock counts seconds)
        assert tune.fail_orphans(optuna_study, storage) == []
    time.sleep(3.2)  # the worker has stopped beating
    assert tune.fail_orphans(optuna_study, storage) == [trial.number]
    assert optuna_study.trials[trial.number].state == TrialState.FAIL


def test_two_processes_share_one_journal_file_study(study, tmp_path):
    params, _, _ = study
    code = (
        "import optuna, sys\n"
        "from optuna.storages import JournalStorage\n"
        "from optuna.storages.journal import JournalFileBackend\n"
        f"s = optuna.load_study(study_name='{params.tune.study}', "
        f"storage=JournalStorage(JournalFileBackend(r'{params.tune.storage}')))\n"
        "for _ in range(5):\n    t = s.ask(); s.tell(t, 1.0)\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    reloaded = optuna.load_study(study_name=params.tune.study,
                                 storage=tune.open_storage(params.tune.storage))  # fmt: skip
    assert sorted(trial.number for trial in reloaded.trials) == list(range(10))


@pytest.mark.slow  # a real `dvc exp run` in a scratch repo
def test_a_bad_point_fails_its_trial_with_the_stage_error_and_nothing_is_kept(tmp_path):
    repo = tiny_repo(tmp_path)
    with pytest.raises(tune.TrialFailed, match=r"error: .*model.num_units = 0"):
        tune.run_trial(repo, "study", 7, {"model.num_units": 0}, repo / ".tune/start.lock")
    listed = run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    assert "study-7" not in listed
    assert yaml.safe_load((repo / "params.yaml").read_text())["model"]["num_units"] == 8


SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def locked(path) -> bool:
    """Whether another holder has an exclusive flock on `path`."""
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_a_trial_stage_ends_like_on_sigterm_when_its_worker_ends():
    worker = subprocess.Popen(SLEEPER)
    code = ("import time\nfrom pipeline.runtime import cli as stage\n"
            "def run(params):\n    print('running', flush=True)\n    time.sleep(120)\n"
            "stage.run_stage(run, [], 'a trial stage')\n")  # fmt: skip
    env = os.environ | {stage.STOP_WITH_ENV: str(worker.pid)}
    trial = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert trial.stdout.readline() == "running\n"
        time.sleep(0.5)
        assert trial.poll() is None  # the worker lives: so does its stage
        worker.kill()
        worker.wait()
        _, stderr = trial.communicate(timeout=30)
    finally:
        for process in (worker, trial):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert trial.returncode == 130 and "error: interrupted" in stderr, stderr


def test_the_start_lock_is_shared_with_the_child_it_is_handed_to(tmp_path):
    lock = tmp_path / "start.lock"
    with tune.start_lock(lock) as held:  # a worker that goes on
        child = subprocess.Popen(SLEEPER, pass_fds=(held,))
        assert locked(lock)
    try:
        assert not locked(lock)  # released for its child too once the block ends
    finally:
        child.kill()
        child.wait()
    with pytest.raises(KeyboardInterrupt), tune.start_lock(lock) as held:  # Ctrl-C meanwhile
        child = subprocess.Popen(SLEEPER, pass_fds=(held,))
        raise KeyboardInterrupt
    try:
        assert locked(lock)  # still held, by the child
    finally:
        child.kill()
        child.wait()
    assert not locked(lock)
    code = ("import subprocess, sys, time\nfrom pathlib import Path\n"
            "from pipeline.search import trials as tune\n"
            "with tune.start_lock(Path(sys.argv[1])) as held:\n"
            f"    child = subprocess.Popen({SLEEPER!r}, pass_fds=(held,))\n"
            "    print(child.pid, flush=True)\n    time.sleep(120)\n")  # fmt: skip
    worker = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    child = int(worker.stdout.readline())
    try:
        assert locked(lock)
        worker.kill()  # a worker that dies
        worker.wait()
        assert locked(lock)  # still held, by its child
    finally:
        os.kill(child, signal.SIGKILL)
        worker.kill()
        worker.wait()
    assert wait_until(lambda: not locked(lock), 30)  # and released when the child ends
