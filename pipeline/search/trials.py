"""The search's work: a study's storage, its trials as `dvc exp run --temp`, the workers.

The cross-process protocol (locks, watchers, signals, heartbeats) is explained in
pipeline/search/__init__.py.

Workers on any number of machines share one study through its storage (a journal file in the
repo by default; a PostgreSQL database for a team). Each worker asks the study for a point,
runs it as `dvc exp run --temp -n <study>-<trial> -S key=value ...` (so `dvc exp show` lists it
and `dvc exp apply` restores it), reads the objective from the trial's MLflow run (tagged with
the study and trial number), and tells the study, until the study holds `tune.trials` trials.
Trials run with `mlflow.registration=better`: only a model that beats the champion becomes a
registered version.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline.params.config as config
import pipeline.runtime.cli as stage
import pipeline.runtime.processes as processes
import pipeline.tracking.lineage as lineage
import pipeline.tracking.store as tracking

log = logging.getLogger(__name__)

STORAGE_ENV = "OPTUNA_STORAGE"
TRIAL_TIMEOUT = 24 * 3600  # seconds; a trial is one full training
START_POLL_S = 0.2
STAGE_MODULES = tuple(f"pipeline.{stage}" for stage in ("fetch", "preprocess", "train", "evaluate"))


class TrialFailed(Exception):
    """One trial failed; the study records the reason and the search goes on."""


@dataclass(frozen=True)
class TrialResult:
    value: float
    experiment: str
    run_id: str


def storage_url(params: config.TuneParams, root: Path) -> str:
    """OPTUNA_STORAGE, else tune.storage, else the journal file (made in the repo)."""
    url = os.environ.get(STORAGE_ENV) or params.storage
    if url:
        return url
    journal = (root / params.journal).resolve()
    journal.parent.mkdir(parents=True, exist_ok=True)
    return str(journal)


def open_storage(url: str):
    """A database URL → Optuna's RDB storage (with heartbeats); a path → its journal file."""
    import optuna

    if "://" in url:  # heartbeats let any worker fail the trials of one that died
        # Heartbeats and fail_stale_trials are "experimental" (since Optuna 2.9), and every ask()
        # warns that heartbeats belong to Study.optimize: this worker records them itself.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(url))


def load_study(params: config.TuneParams, storage):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the worker logs each trial itself
    return optuna.create_study(
        study_name=params.study, storage=storage, direction=params.direction, load_if_exists=True
    )


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    """Draw one point of the declared space."""
    point = {}
    for name, dimension in space.items():
        if dimension.kind == "float":
            point[name] = trial.suggest_float(
                name, dimension.low, dimension.high, log=dimension.log
            )
        elif dimension.kind == "int":
            point[name] = trial.suggest_int(
                name, dimension.low, dimension.high, step=dimension.step
            )
        else:
            point[name] = trial.suggest_categorical(name, dimension.choices)
    return point


def experiment_name(study: str, number: int) -> str:
    return f"{study}-{number}"


def _die_with_parent() -> None:
    """In a worker started by `--workers N`: killed when that command dies (its trial's stages
    then end too, see run_trial)."""
    processes.die_with_parent(signal.SIGKILL)


@contextlib.contextmanager
def start_lock(path: Path) -> Iterator[int]:
    """Hold an exclusive lock on `path` (flock); yields its descriptor, to hand to a child.

    A child given the descriptor (Popen's pass_fds) shares the lock: if this process dies, or
    the block ends with an exception (Ctrl-C), the lock stays held until the child ends too.
    When the block ends normally it is released here, for both.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield descriptor
        fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def run_trial(root: Path, study: str, number: int, point: dict[str, Any], lock: Path) -> str:
    """`dvc exp run --temp` for one point; the experiment's name, or TrialFailed with why.

    Concurrent `dvc exp run --temp` in one clone race: each stashes its experiment on one
    shared stash (refs/exps/stash) and then runs the newest entry, which can be the other's
    (dvc/repo/experiments/queue/tempdir.py, `get`). Seen here: a trial ran another's point
    under its own trial tags. So a worker holds the start `lock` from stashing until a stage of
    its experiment is running (DVC has taken the entry by then) or dvc has ended; `dvc` holds
    it too, so a worker that dies meanwhile leaves it held until its `dvc` has ended.

    `dvc` is not killed (but after TRIAL_TIMEOUT): killed while stashing, it leaves the clone on
    a detached HEAD with the trial's params in params.yaml (scmrepo's detach_head and DVC's
    _stash_exp). The trial's stages end when this worker ends, however it ends (Ctrl-C,
    SIGTERM, SIGKILL: processes.stop_with), and `dvc` then fails and cleans up.
    """
    name = experiment_name(study, number)
    sets = [argument for key, value in point.items() for argument in ("-S", f"{key}={value}")]
    command = ["dvc", "exp", "run", "--temp", "-n", name, *sets, "-S", "mlflow.registration=better"]
    marks = {
        lineage.TRIAL_TAG_ENV["optuna.study"]: study,
        lineage.TRIAL_TAG_ENV["optuna.trial"]: str(number),
    }
    env = processes.tools_environment() | marks | {stage.STOP_WITH_ENV: str(os.getpid())}
    log.info("trial %d: %s", number, " ".join(f"{key}={value}" for key, value in point.items()))
    with tempfile.TemporaryFile() as output:
        with start_lock(lock) as held:
            process = subprocess.Popen(
                command,
                cwd=root,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(held,),
            )
            while process.poll() is None and not stage_running(marks):
                time.sleep(START_POLL_S)
        try:
            code = process.wait(timeout=TRIAL_TIMEOUT)
        except subprocess.TimeoutExpired:  # a day: past the stash, so killing it is safe
            process.kill()
            raise
        output.seek(0)
        text = output.read().decode(errors="replace")
    if code != 0:
        raise TrialFailed(processes.failure_reason(text, f"dvc exp run exited {code}"))
    return name


def stage_running(marks: dict[str, str]) -> bool:
    """Whether a stage (`python -m pipeline.<stage>`) with all of `marks` in its environment
    runs on this machine."""

    def matching(cmdline: list[str], read_environ) -> bool:
        if not processes.runs_module(cmdline, *STAGE_MODULES):
            return False
        environ = read_environ()
        return all(environ.get(key) == value for key, value in marks.items())

    return bool(processes.processes(matching))


def read_result(study: str, number: int, metric: str, experiment: str) -> TrialResult:
    """The objective from the trial's MLflow run, found by its study and trial tags."""
    import mlflow

    runs = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string=f"tags.`optuna.study` = '{study}' and tags.`optuna.trial` = '{number}' "
        "and attributes.status = 'FINISHED'",
    )
    scored = [run for run in runs if metric in run.data.metrics]
    if not scored:
        raise TrialFailed(f"no finished MLflow run of trial {number} has the metric {metric!r}")
    run = scored[0]
    ran_as = run.data.tags.get("dvc.exp_name")
    if ran_as not in (None, experiment):  # the guard against the stash race in run_trial
        raise TrialFailed(
            f"trial {number}'s MLflow run {run.info.run_id} ran experiment "
            f"{ran_as}, not {experiment}"
        )
    return TrialResult(run.data.metrics[metric], experiment, run.info.run_id)


def duplicate_of(study, trial, point: dict[str, Any]):
    """A finished or running trial at the same point, if any: a point runs once."""
    from optuna.trial import TrialState

    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number != trial.number and other.params == point:
            return other
    return None


def fail(study, trial, reason: str) -> None:
    """Mark the trial failed, with its reason (the user attribute `fail_reason`)."""
    from optuna.trial import TrialState

    trial.set_user_attr("fail_reason", reason)
    study.tell(trial, state=TrialState.FAIL)
    log.warning("trial %d failed: %s", trial.number, reason)


def fail_orphans(study, storage) -> list[int]:
    """Fail the RUNNING trials whose worker is gone: on this host, a worker process that has
    ended (e.g. SIGKILL); with a database storage, on any host, a worker whose heartbeat
    (see `heartbeat`) stopped more than the storage's grace period ago (e.g. its machine died).
    """
    import optuna
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid", 0)
        if host == socket.gethostname() and not processes.process_alive(pid):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            try:
                storage.set_trial_user_attr(trial_id, "fail_reason", "its worker died")
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker failed it first
            failed.append(trial.number)
            log.warning(
                "trial %d was left running by a worker that died; marked failed", trial.number
            )
    if getattr(storage, "heartbeat_interval", None):
        optuna.storages.fail_stale_trials(study)
        stale = {
            trial.number: trial.user_attrs.get("host")
            for trial in running
            if trial.number not in failed
        }
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if trial.number in stale and "fail_reason" not in trial.user_attrs:
                failed.append(trial.number)
                log.warning(
                    "trial %d: its worker on %s stopped sending heartbeats; marked failed",
                    trial.number,
                    stale[trial.number],
                )
    return failed


@contextlib.contextmanager
def heartbeat(storage, study, number: int) -> Iterator[None]:
    """Record trial `number`'s heartbeat now and every `heartbeat_interval` s until the block
    ends (a database storage; otherwise nothing), so `fail_orphans` on any worker fails the
    trial once this worker stops (e.g. its machine died). Optuna records heartbeats only
    inside Study.optimize (its _optimize.py); these workers ask and tell.
    """
    interval = getattr(storage, "heartbeat_interval", None)
    if not interval:
        yield
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as error:  # the database may be away for a while; keep trying
                log.warning("trial %d: heartbeat not recorded: %s", number, error)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_one(study, storage, params: config.Params, root: Path) -> bool:
    """Fail orphaned trials, ask for a trial and run it; False once the budget is spent."""
    fail_orphans(study, storage)
    budget = params.tune.trials
    if len(study.get_trials(deepcopy=False)) >= budget:
        return False
    trial = study.ask()
    if trial.number >= budget:  # another worker asked at the same moment
        fail(study, trial, "over budget: another worker took the last trial; not run")
        return False
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    point = suggest(trial, params.tune.space)
    same = duplicate_of(study, trial, point)
    if same is not None:
        fail(study, trial, f"same point as trial {same.number}; not run twice")
        return True
    try:
        with heartbeat(storage, study, trial.number):
            experiment = run_trial(
                root,
                params.tune.study,
                trial.number,
                point,
                lock_folder(params, root) / "start.lock",
            )
            result = read_result(params.tune.study, trial.number, params.tune.metric, experiment)
    except (TrialFailed, subprocess.TimeoutExpired) as error:
        fail(study, trial, str(error))
        return True
    trial.set_user_attr("dvc_experiment", result.experiment)
    trial.set_user_attr("mlflow_run_id", result.run_id)
    study.tell(trial, result.value)
    log.info(
        "trial %d: %s %.4f (experiment %s, MLflow run %s)",
        trial.number,
        params.tune.metric,
        result.value,
        result.experiment,
        result.run_id,
    )
    return True


def report_best(study, metric: str) -> None:
    try:
        best = study.best_trial
    except ValueError:
        log.warning("no trial of study %r completed", study.study_name)
        return
    log.info(
        "best trial %d: %s %.4f with %s; experiment %s, MLflow run %s (dvc exp apply %s)",
        best.number,
        metric,
        best.value,
        best.params,
        best.user_attrs["dvc_experiment"],
        best.user_attrs["mlflow_run_id"],
        best.user_attrs["dvc_experiment"],
    )


def lock_folder(params: config.Params, root: Path) -> Path:
    """Where a clone's workers keep their locks: beside the journal (git- and DVC-ignored)."""
    return (root / params.tune.journal).parent


class PrepareError(Exception):
    """The data stages could not be reproduced, so no trial can run."""


def prepare_data(root: Path, lock_file: Path) -> None:
    """`dvc repro preprocess` once per clone, one worker at a time, before any trial.

    Trials then restore the data stages from DVC's run cache; without this, the first trials
    of a never-reproduced clone each fetched and split the data at once in their temporary
    copies, and one could fail.
    """
    from filelock import FileLock

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_file):
        result = subprocess.run(
            ["dvc", "repro", "preprocess"],
            cwd=root,
            env=processes.tools_environment(),
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        output, code = result.stderr + result.stdout, result.returncode
        reason = processes.failure_reason(output, f"exit {code}")
        raise PrepareError(f"dvc repro preprocess failed before any trial: {reason}")


def work(params: config.Params, root: Path) -> None:
    """One worker: run trials until the study's budget is spent, then report the best."""
    tracking.connect(params.mlflow, root)
    prepare_data(root, lock_folder(params, root) / "prepare.lock")
    storage = open_storage(storage_url(params.tune, root))
    study = load_study(params.tune, storage)
    log.info(
        "study %r: %d of %d trials so far", params.tune.study, len(study.trials), params.tune.trials
    )
    while run_one(study, storage, params, root):
        pass
    report_best(study, params.tune.metric)


def spawn_workers(argv: list[str], count: int) -> list[subprocess.Popen]:
    """`count` more workers of this command, as processes on this machine."""
    command = [sys.executable, "-m", "pipeline.search.tune", *argv, "--workers", "1"]
    return [subprocess.Popen(command, preexec_fn=_die_with_parent) for _ in range(count)]
