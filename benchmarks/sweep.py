"""Queued sweeps: experiments per hour for `dvc queue start -j 1` and `-j 2`, all must land.

Moved here from the test suite (it was the 8-experiment load test): in a scratch copy of the
repo with the data fetched by `make repro`, a baseline `dvc repro`, then for each worker count
8 short experiments queued with `dvc exp run --queue -S ...` and run by `dvc queue start -j N`.
Each must finish as Success with a FINISHED MLflow run in the scratch repo's own store.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

from benchmarks.scratch import scratch_repo


def baseline(iterations: int) -> tuple[Path, dict]:
    """A scratch repo with short training, its baseline run and commit."""
    scratch, env = scratch_repo("bench-sweep-")
    params = scratch / "params.yaml"
    params.write_text(params.read_text().replace("iterations: 2000", f"iterations: {iterations}"))
    for command in (["dvc", "repro", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "baseline"]):  # fmt: skip
        subprocess.run(command, cwd=scratch, check=True, env=env, capture_output=True)
    return scratch, env


def sweep(scratch: Path, env: dict, workers: int, units: list[int], timeout: float) -> dict:
    """Queue one experiment per value of model.num_units, run them with `workers`; time it,
    queueing included (a search's trial pays its own stash too)."""
    values = ",".join(map(str, units))
    started = time.monotonic()
    subprocess.run(["dvc", "exp", "run", "--queue", "-S", f"model.num_units={values}"],
                   cwd=scratch, env=env, check=True, capture_output=True)  # fmt: skip
    subprocess.run(["dvc", "queue", "start", "-j", str(workers)], cwd=scratch, env=env,
                   check=True, capture_output=True)  # fmt: skip
    while time.monotonic() - started < timeout:
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


def run(experiments: int = 8, iterations: int = 200, timeout: float = 1800) -> list[dict]:
    """One sweep of `experiments` with `-j 1`, then one with `-j 2`, in one scratch repo."""
    scratch, env = baseline(iterations)
    try:
        results = []
        for workers, first in ((1, 16), (2, 16 + experiments)):  # new values each time
            units = list(range(first, first + experiments))
            results.append(sweep(scratch, env, workers, units, timeout))
            print(f"  {json.dumps(results[-1])}", flush=True)  # noqa: T201
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [row | {"iterations": iterations} for row in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    results = run(args.experiments, args.iterations, args.timeout)
    failed = [row for row in results if row["succeeded"] != row["experiments"]]
    if failed:
        raise SystemExit(f"error: experiments did not all succeed: {failed}")


if __name__ == "__main__":
    main()
