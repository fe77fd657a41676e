"""Searches: trials per hour of `python -m pipeline.search.tune` with 1 and with 2 workers, its
trials enqueued at the queued sweeps' points so that both train the same models."""

import sys
from pathlib import Path

import yaml

from benchmarks.scratch import run, scratch_repo
from benchmarks.sweeps import EXPERIMENTS, ITERATIONS, per_hour_table


def study(scratch: Path, env: dict, workers: int, units: list[int]) -> dict:
    """Run one study of a trial per value of model.num_units with `workers`; time it."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    name = f"bench-{workers}-workers"
    params_file = scratch / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    space = {"model.num_units": {"kind": "choice", "choices": units}}
    params["tune"] |= {"study": name, "trials": len(units), "space": space}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    journal = scratch / params["tune"]["journal"]
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    enqueued = optuna.create_study(study_name=name, storage=storage,
                                   direction=params["tune"]["direction"])  # fmt: skip
    for value in units:
        enqueued.enqueue_trial({"model.num_units": value})
    elapsed = run([sys.executable, "-m", "pipeline.search.tune", "--workers", str(workers)],
                  scratch, env)  # fmt: skip
    found = optuna.load_study(study_name=name, storage=storage)
    complete = [t for t in found.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"workers": workers, "trials": len(units), "completed": len(complete),
            "seconds": elapsed, "per_hour": len(complete) * 3600 / elapsed,
            "best": found.best_value if complete else None}  # fmt: skip


def measure() -> list[dict]:
    """One study with 1 worker, then one with 2, at the queued sweeps' points."""
    with scratch_repo("bench-tune-", ITERATIONS, baseline=True) as (scratch, env):
        return [study(scratch, env, workers, list(range(first, first + EXPERIMENTS)))
                for workers, first in ((1, 16), (2, 16 + EXPERIMENTS))]  # fmt: skip


def table(rows: list[dict]) -> list[str]:
    title = (f"Searches: `make tune` at the queued sweeps' points (trials of {ITERATIONS} "
             "iterations, each a DVC experiment)")  # fmt: skip
    return per_hour_table(title, "trials", rows, "completed", "trials")
