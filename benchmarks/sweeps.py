"""Queued sweeps: experiments per hour for `dvc queue start -j 1` and `-j 2` (Success only)."""

import json
import subprocess
import time
from pathlib import Path

from benchmarks import markdown
from benchmarks.scratch import scratch_repo

EXPERIMENTS, ITERATIONS, TIMEOUT_S = 8, 200, 1800


def sweep(scratch: Path, env: dict, workers: int, units: list[int]) -> dict:
    """One queued experiment per model.num_units, run by `workers`; timed, queueing included."""

    def dvc(*args: str) -> str:
        return subprocess.run(["dvc", *args], cwd=scratch, env=env, check=True,
                              capture_output=True, text=True).stdout  # fmt: skip

    started = time.monotonic()
    dvc("exp", "run", "--queue", "-S", f"model.num_units={','.join(map(str, units))}")
    dvc("queue", "start", "-j", str(workers))
    while time.monotonic() - started < TIMEOUT_S:
        status = dvc("queue", "status")
        if not any(state in status for state in ("Queued", "Running")):
            break
        time.sleep(2)
    elapsed = time.monotonic() - started
    succeeded = status.count("Success")
    dvc("queue", "remove", "--all")
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
