"""`make tune`: search hyperparameters with Optuna; each trial a DVC experiment and an MLflow run.

The search space, metric, budget and study storage are `tune:` in params.yaml; the workers (here,
`--workers N`, and on other machines) share the study. A trial that is not run, or fails, raises
TrialFailed: Optuna marks it failed and the search goes on. How the processes keep each other
honest is explained in pipeline/search/__init__.py.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.trial import TrialState

import pipeline.params.tools as tools
import pipeline.runtime.processes as processes
import pipeline.tracking.lineage as lineage
import pipeline.tracking.store as tracking
from pipeline.runtime import cli

log = logging.getLogger(__name__)

STORAGE_ENV = "OPTUNA_STORAGE"
HEARTBEAT_INTERVAL_S = 60  # a database storage: how often a worker records its trial's heartbeat
GRACE_PERIOD_S = 180  # and how old a heartbeat makes its trial failed by the next worker to ask
STOP_POLL_S = 0.2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STAGE_MODULES = tuple(f"pipeline.{stage}" for stage in ("fetch", "preprocess", "train", "evaluate"))
# The trials that count against the budget: all but the enqueued points not yet run (WAITING).
TAKEN = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class TrialFailed(Exception):
    """One trial was not run or failed; the study records the reason and the search goes on."""


class PrepareError(Exception):
    """The data stages could not be reproduced, so no trial can run."""


@dataclass(frozen=True)
class TrialResult:
    value: float
    experiment: str
    run_id: str


def storage_url(params: tools.TuneParams, root: Path) -> str:
    """OPTUNA_STORAGE, else tune.storage, else the journal file (made in the repo)."""
    url = os.environ.get(STORAGE_ENV) or params.storage
    if url:
        return url
    journal = (root / params.journal).resolve()
    journal.parent.mkdir(parents=True, exist_ok=True)
    return str(journal)


def open_storage(
    url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL_S, grace_period: int = GRACE_PERIOD_S
) -> optuna.storages.BaseStorage:
    """A database URL → Optuna's RDB storage, with heartbeats; a path → its journal file."""
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    with warnings.catch_warnings():  # heartbeats are "experimental" (since Optuna 2.9)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=log_stale,
        )


def load_study(params: tools.TuneParams, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """The study `tune.study` in `storage`, made if it is not there yet."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the worker logs each trial itself
    # ... and why one failed: Optuna's own lines for it repeat the reason with a traceback.
    # optuna.logging has one level for the whole library (whose storages warn of a stuck lock),
    # no switch for those lines alone: hence their module's logger, by name.
    logging.getLogger("optuna.study._optimize").setLevel(logging.ERROR)
    return optuna.create_study(
        study_name=params.study, storage=storage, direction=params.direction, load_if_exists=True
    )


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """Draw one point of the declared space: each range's fields are Optuna's arguments."""
    kinds = {"float": trial.suggest_float, "int": trial.suggest_int}
    kinds["choice"] = trial.suggest_categorical
    return {
        name: kinds[dimension.kind](name, **dimension.model_dump(exclude={"kind"}))
        for name, dimension in space.items()
    }


def experiment_name(study: str, number: int) -> str:
    """The DVC experiment of trial `number`: `dvc exp show` lists it, `dvc exp apply` takes it."""
    return f"{study}-{number}"


def run_trial(root: Path, study: str, number: int, point: dict[str, Any]) -> str:
    """`dvc exp run --temp` of one point; the experiment's name, or TrialFailed with why."""
    name = experiment_name(study, number)
    sets = [argument for key, value in point.items() for argument in ("-S", f"{key}={value}")]
    marks = {
        lineage.TRIAL_TAG_ENV["optuna.study"]: study,
        lineage.TRIAL_TAG_ENV["optuna.trial"]: str(number),
    }
    log.info("trial %d: %s", number, " ".join(f"{key}={value}" for key, value in point.items()))
    code, output = run_dvc(
        ["exp", "run", "--temp", "-n", name, *sets, "-S", "mlflow.registration=better"],
        root,
        processes.tools_environment() | marks,
    )
    if code != 0:
        raise TrialFailed(processes.failure_reason(output, f"dvc exp run exited {code}"))
    return name


def run_dvc(arguments: list[str], root: Path, env: dict[str, str]) -> tuple[int, str]:
    """`dvc --wait-for-lock ARGUMENTS` in `root`: its exit code and output; interrupted, `stop`."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            ["dvc", "--wait-for-lock", *arguments],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            process_group=0,  # a terminal's Ctrl-C reaches this worker, not `dvc`: see `stop`
        )
        try:
            code = process.wait()
        except KeyboardInterrupt:
            stop(process)
            raise
        output.seek(0)
        return code, output.read().decode(errors="replace")


def stop(process: subprocess.Popen) -> None:
    """End a `dvc` command by SIGINT to each of its stages, once, never to `dvc` itself; a stash
    under way is let finish first, signals ignored meanwhile (pipeline/search/)."""
    log.warning("stopping dvc: its stage is interrupted, then it cleans up")
    signalled: set[int] = set()
    ignored = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        while process.poll() is None:
            for stage in stages_of(process.pid):
                if stage.pid not in signalled:
                    signalled.add(stage.pid)
                    with contextlib.suppress(psutil.Error):
                        stage.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_POLL_S)
    finally:
        for signum, handler in ignored.items():
            signal.signal(signum, handler)


def stages_of(pid: int) -> list[psutil.Process]:
    """The pipeline stages (`python -m pipeline.<stage>`) among process `pid`'s descendants."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # ended meanwhile
                if processes.runs_module(child.cmdline(), *STAGE_MODULES):
                    found.append(child)
    return found


def read_result(study: str, number: int, metric: str, experiment: str) -> TrialResult:
    """The objective from the finished MLflow run tagged with the study and trial and named for
    the trial's experiment (another's under these tags: DVC's stash race, not this trial's)."""
    import mlflow

    runs = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string=f"tags.`optuna.study` = '{study}' and tags.`optuna.trial` = '{number}' "
        f"and tags.`dvc.exp_name` = '{experiment}' and attributes.status = 'FINISHED'",
    )
    scored = [run for run in runs if metric in run.data.metrics]
    if not scored:
        raise TrialFailed(
            f"no finished MLflow run of trial {number} (experiment {experiment}) has the "
            f"metric {metric!r}"
        )
    return TrialResult(scored[0].data.metrics[metric], experiment, scored[0].info.run_id)


def duplicate_of(
    study: optuna.Study, trial: optuna.Trial, point: dict[str, Any]
) -> optuna.trial.FrozenTrial | None:
    """A finished or running trial at the same point, if any: a point runs once."""
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number != trial.number and other.params == point:
            return other
    return None


def taken(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count against the budget, whatever their state."""
    return study.get_trials(deepcopy=False, states=TAKEN)


def fail_orphans(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Fail the RUNNING trials of ended workers of this host (a journal has no heartbeats)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid", 0)
        if host != socket.gethostname() or processes.process_alive(pid):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", "its worker died")
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        failed.append(trial.number)
        log.warning("trial %d was left running by a worker that died; marked failed", trial.number)
    return failed


def log_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's heartbeat_stale_trial_callback: a finished trial takes no user attribute."""
    host = trial.user_attrs.get("host", "an unknown host")
    log.warning(
        "trial %d: its worker on %s stopped sending heartbeats; marked failed", trial.number, host
    )


def objective(
    study: optuna.Study, params: tools.ToolParams, root: Path
) -> Callable[[optuna.Trial], float]:
    """What study.optimize calls: the trial's value, or TrialFailed (also its `fail_reason`)."""
    settings = params.tune

    def run(trial: optuna.Trial) -> float:
        try:
            result = run_point(study, trial, settings, root)
        except TrialFailed as error:
            trial.set_user_attr("fail_reason", str(error))
            log.warning("trial %d failed: %s", trial.number, error)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted: its worker was stopped")
            raise
        trial.set_user_attr("dvc_experiment", result.experiment)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        where = f"experiment {result.experiment}, MLflow run {result.run_id}"
        log.info("trial %d: %s %.4f (%s)", trial.number, settings.metric, result.value, where)
        return result.value

    return run


def run_point(
    study: optuna.Study, trial: optuna.Trial, settings: tools.TuneParams, root: Path
) -> TrialResult:
    """Draw the trial's point and run it, unless the budget is spent or the point has run."""
    # Two workers asked for the last trial at the same moment: the later one is not run.
    if sum(1 for other in taken(study) if other.number < trial.number) >= settings.trials:
        raise TrialFailed("over budget: another worker took the last trial; not run")
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    point = suggest(trial, settings.space)
    same = duplicate_of(study, trial, point)
    if same is not None:
        raise TrialFailed(f"same point as trial {same.number}; not run twice")
    experiment = run_trial(root, settings.study, trial.number, point)
    return read_result(settings.study, trial.number, settings.metric, experiment)


def search(
    study: optuna.Study, storage: optuna.storages.BaseStorage, params: tools.ToolParams, root: Path
) -> None:
    """Run trials with study.optimize until the study holds `tune.trials` of them."""
    budget = params.tune.trials
    fail_orphans(study, storage)
    if len(taken(study)) >= budget:
        return
    study.optimize(
        objective(study, params, root),
        callbacks=[
            lambda study, _trial: fail_orphans(study, storage),
            optuna.study.MaxTrialsCallback(budget, states=TAKEN),
        ],
        catch=(TrialFailed,),
    )


def report_best(study: optuna.Study, metric: str) -> None:
    """Log the best trial: its value, point, experiment (to apply) and MLflow run."""
    try:
        best = study.best_trial
    except ValueError:
        log.warning("no trial of study %r completed", study.study_name)
        return
    experiment, run_id = best.user_attrs["dvc_experiment"], best.user_attrs["mlflow_run_id"]
    where = f"experiment {experiment}, MLflow run {run_id} (dvc exp apply {experiment})"
    point = f"{best.params}; {where}"
    log.info("best trial %d: %s %.4f with %s", best.number, metric, best.value, point)


def prepare_data(root: Path, lock_file: Path) -> None:
    """`dvc repro preprocess` before any trial, one worker of a clone at a time (a FileLock)."""
    from filelock import FileLock

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_file):
        code, output = run_dvc(["repro", "preprocess"], root, processes.tools_environment())
    if code != 0:
        reason = processes.failure_reason(output, f"exit {code}")
        raise PrepareError(f"dvc repro preprocess failed before any trial: {reason}")


def work(params: tools.ToolParams, root: Path) -> None:
    """One worker: run trials until the study's budget is spent, then report the best."""
    tracking.connect(params.mlflow, root)
    prepare_data(root, (root / params.tune.journal).parent / "prepare.lock")  # git-ignored
    storage = open_storage(storage_url(params.tune, root))
    study = load_study(params.tune, storage)
    log.info(
        "study %r: %d of %d trials so far", params.tune.study, len(taken(study)), params.tune.trials
    )
    search(study, storage, params, root)
    report_best(study, params.tune.metric)


def run(params: tools.ToolParams, params_file: str, workers: int = 1) -> None:
    """Work on the study here and in `workers - 1` more processes on this machine, each in a
    process group of its own (Ctrl-C reaches this command only, which stops each of them once)."""
    cli.unwind_on_signals()  # SIGTERM as Ctrl-C: the worker stops its trial's experiment first
    command = [sys.executable, "-m", "pipeline.search.tune", "--params", params_file]
    others = [
        subprocess.Popen([*command, "--workers", "1"], stdin=subprocess.DEVNULL, process_group=0)
        for _ in range(workers - 1)
    ]
    try:
        work(params, Path(params_file).resolve().parent)
    except KeyboardInterrupt:
        for worker in others:  # each stops its own trial likewise
            worker.terminate()
        sys.stderr.write("error: interrupted; a trial that was running is marked failed\n")
        raise SystemExit(130) from None
    finally:
        codes = [worker.wait() for worker in others]
    if any(codes):
        raise SystemExit(f"error: {sum(1 for code in codes if code)} worker(s) failed")


def worker_count(text: str) -> int:
    if int(text) < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return int(text)


ARGUMENTS = {"--workers": {"type": worker_count, "default": 1, "help": "processes on this machine"}}


def main(argv: list[str] | None = None) -> None:
    expected = (tracking.TrackingError, PrepareError)
    cli.run_command(run, argv, __doc__, ARGUMENTS, expected, tools.load_params_or_exit)


if __name__ == "__main__":
    main()
