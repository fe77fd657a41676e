"""Searches: trials per hour of `python -m pipeline.search.tune` with 1 and with 2 workers.

In a scratch copy of the repo (data from `make repro`, its own MLflow store and journal file),
after a baseline `dvc repro` with short training, one study per worker count whose trials are
the experiments of the queued sweeps (benchmarks/sweep.py): as many, at the same points
(model.num_units 16, 17, ... with 1 worker, the next ones with 2), enqueued in the study, so
that a trial and a queued experiment train the same model. Every trial must complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.sweep import baseline


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
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pipeline.search.tune", "--workers", str(workers)],
                   cwd=scratch, env=env, check=True, capture_output=True)  # fmt: skip
    elapsed = time.monotonic() - started
    found = optuna.load_study(study_name=name, storage=storage)
    complete = [t for t in found.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"workers": workers, "trials": len(units), "completed": len(complete),
            "seconds": elapsed, "per_hour": len(complete) * 3600 / elapsed,
            "best": found.best_value if complete else None}  # fmt: skip


def run(trials: int = 8, iterations: int = 200) -> list[dict]:
    """One study of `trials` with 1 worker, then one with 2, at the queued sweeps' points."""
    scratch, env = baseline(iterations)
    try:
        return [study(scratch, env, workers, list(range(first, first + trials)))
                for workers, first in ((1, 16), (2, 16 + trials))]  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    results = run(args.trials, args.iterations)
    print(json.dumps(results, indent=2))  # noqa: T201
    failed = [row for row in results if row["completed"] != row["trials"]]
    if failed:
        raise SystemExit(f"error: trials did not all complete: {failed}")


if __name__ == "__main__":
    main()
