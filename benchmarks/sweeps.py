"""Queued sweeps: experiments per hour for `dvc queue start -j 1` and `-j 2`.

In a scratch copy of the repo with the data fetched by `make repro`, a baseline `dvc repro`,
then for each worker count 8 short experiments queued with `dvc exp run --queue -S ...` and run
by `dvc queue start -j N`. Only those that finish as Success count.
"""

import json
import subprocess
import time
from pathlib import Path

from benchmarks import markdown
from benchmarks.scratch import scratch_repo

EXPERIMENTS, ITERATIONS, TIMEOUT_S = 8, 200, 1800


def sweep(scratch: Path, env: dict, workers: int, units: list[int]) -> dict:
    """Queue one experiment per value of model.num_units, run them with `workers`; time it,
    queueing included (a search's trial pays its own stash too)."""
    values = ",".join(map(str, units))
    started = time.monotonic()
    subprocess.run(["dvc", "exp", "run", "--queue", "-S", f"model.num_units={values}"],
                   cwd=scratch, env=env, check=True, capture_output=True)  # fmt: skip
    subprocess.run(["dvc", "queue", "start", "-j", str(workers)], cwd=scratch, env=env,
                   check=True, capture_output=True)  # fmt: skip
    while time.monotonic() - started < TIMEOUT_S:
        status = subprocess.run(["dvc", "queue", "status"], cwd=scratch, env=env, check=True,
                                capture_output=True, text=True).stdout  # fmt: skip
        if not any(state in status for state in ("Queued", "Running")):
            break
        time.sleep(2)
    elapsed = time.monotonic() - started
    succeeded = status.count("Success")
    subprocess.run(["dvc", "queue", "remove", "--all"], cwd=scratch, env=env, capture_output=True)
    return {"workers": workers, "experiments": len(units), "succeeded": succeeded,
            "seconds": elapsed, "per_hour": succeeded * 3600 / elapsed}  # fmt: skip


def measure() -> list[dict]:
    """One sweep with `-j 1`, then one with `-j 2` at new points, in one scratch repo."""
    results = []
    with scratch_repo("bench-sweep-", ITERATIONS, baseline=True) as (scratch, env):
        for workers, first in ((1, 16), (2, 16 + EXPERIMENTS)):
            results.append(sweep(scratch, env, workers, list(range(first, first + EXPERIMENTS))))
            print(f"  {json.dumps(results[-1])}", flush=True)  # noqa: T201
    return [row | {"iterations": ITERATIONS} for row in results]


def table(rows: list[dict]) -> list[str]:
    title = (f"Queued sweeps: {rows[0]['experiments']} experiments of {rows[0]['iterations']} "
             "iterations, `dvc exp run --queue` + `dvc queue start -j N`")  # fmt: skip
    return per_hour_table(title, "experiments", rows, "succeeded", "experiments")


def per_hour_table(title: str, unit: str, rows: list[dict], done: str, total: str) -> list[str]:
    """Workers, `done` of `total`, seconds and per hour; then 2 workers against 1."""
    lines = [f"## {title}", "", *markdown.table(
        ["workers", f"{unit} done", "seconds", f"{unit}/hour"],
        [[row["workers"], f"{row[done]} of {row[total]}", f"{row['seconds']:.0f}",
          f"{row['per_hour']:.0f}"] for row in rows])]  # fmt: skip
    if len(rows) == 2 and rows[0]["per_hour"]:
        lines += ["", f"2 workers / 1 worker: **{rows[1]['per_hour'] / rows[0]['per_hour']:.2f}×**"]
    return lines
