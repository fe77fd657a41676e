"""Searches: trials per hour of `python -m pipeline.search.tune` with 1 and with 2 workers.

In a scratch copy of the repo (data from `make repro`, its own MLflow store and journal file),
after a baseline `dvc repro` with short training, one study per worker count with a budget of
`--trials` trials over learning rate and units. Every trial must complete.
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

SPACE = {
    "train.learning_rate": {"kind": "float", "low": 3e-4, "high": 1e-2, "log": True},
    "model.num_units": {"kind": "choice", "choices": [64, 96, 128, 160, 192, 256]},
}


def study(scratch: Path, env: dict, workers: int, trials: int) -> dict:
    """Run one study of `trials` trials with `workers` processes; time it, count outcomes."""
    import optuna

    name = f"bench-{workers}-workers"
    params_file = scratch / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["tune"] |= {"study": name, "trials": trials, "space": SPACE}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pipeline.search.tune", "--workers", str(workers)],
                   cwd=scratch, env=env, check=True, capture_output=True)  # fmt: skip
    elapsed = time.monotonic() - started
    journal = optuna.storages.journal.JournalFileBackend(str(scratch / params["tune"]["journal"]))
    found = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(journal))
    complete = [t for t in found.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"workers": workers, "trials": trials, "completed": len(complete),
            "seconds": elapsed, "per_hour": len(complete) * 3600 / elapsed,
            "best": found.best_value if complete else None}  # fmt: skip


def run(trials: int = 4, iterations: int = 200) -> list[dict]:
    scratch, env = baseline(iterations)
    try:
        return [study(scratch, env, workers, trials) for workers in (1, 2)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    results = run(args.trials, args.iterations)
    print(json.dumps(results, indent=2))  # noqa: T201
    failed = [row for row in results if row["completed"] != row["trials"]]
    if failed:
        raise SystemExit(f"error: trials did not all complete: {failed}")


if __name__ == "__main__":
    main()
