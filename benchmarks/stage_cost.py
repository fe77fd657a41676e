"""The train stage against a PyTorch peer doing the same work: cost per iteration, whole runs.

Both validate on the 5,000 validation images every `log_every` (100) iterations. The cost per
iteration is the slope of a whole process's wall time between `short` and `long` iterations, so
start-up and the work at the end (saving, model logging) cancel out; `long` is the default 2,000,
so that run is also the whole run, start to exit (a wide span: this machine's timings vary).
The stage logs its time inside training steps as a run metric (`time/training_steps_s`): the
rest of its wall time is what it spends outside them (imports, data, validation, MLflow, saving
and logging the model).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.scratch import REPO, scratch_repo


def logged_times(scratch: Path) -> tuple[float, float]:
    """The stage's seconds in training steps and in validation, from the run it logged."""
    import mlflow

    from pipeline.train import TIME_METRICS

    params = yaml.safe_load((scratch / "bench-params.yaml").read_text())
    run_id = json.loads((scratch / params["paths"]["run_info"]).read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}")
    metrics = client.get_run(run_id).data.metrics
    return metrics[TIME_METRICS["training"]], metrics[TIME_METRICS["validation"]]


def stage(scratch: Path, env: dict, iterations: int) -> dict[str, float]:
    """`python -m pipeline.train` with `iterations`: wall seconds, and its own step timings."""
    params = yaml.safe_load((scratch / "params.yaml").read_text())
    params["train"]["iterations"] = iterations
    (scratch / "bench-params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, "-m", "pipeline.train", "--params", "bench-params.yaml"]
    started = time.perf_counter()
    subprocess.run(command, cwd=scratch, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    steps, validation = logged_times(scratch)
    return {"wall": wall, "steps": steps, "validation": validation, "outside": wall - steps}


def peer(iterations: int) -> dict[str, float]:
    """The PyTorch peer, validating as the stage does: wall seconds of its whole process."""
    command = [sys.executable, "-m", "benchmarks.contenders", "peer", "--iterations",
               str(iterations), "--every", "100", "--validate"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    return {"wall": time.perf_counter() - started}


def run(short: int = 200, long: int = 2000) -> dict:
    """Both contenders at `short` and `long` iterations, interleaved."""
    scratch, env = scratch_repo("bench-stage-")
    try:
        subprocess.run(["dvc", "repro", "-q", "preprocess"], cwd=scratch, env=env, check=True,
                       capture_output=True)  # fmt: skip
        runs: dict[str, dict[int, dict]] = {"stage": {}, "peer": {}}
        for iterations in (short, long):
            runs["stage"][iterations] = stage(scratch, env, iterations)
            runs["peer"][iterations] = peer(iterations)
            print(f"  {iterations} iterations: stage {runs['stage'][iterations]['wall']:.1f} s, "  # noqa: T201
                  f"peer {runs['peer'][iterations]['wall']:.1f} s", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    slope = {
        name: 1000 * (timings[long]["wall"] - timings[short]["wall"]) / (long - short)
        for name, timings in runs.items()
    }
    return {"short": short, "long": long, "ms_per_iteration": slope,
            "runs": {name: {str(k): v for k, v in timings.items()}
                     for name, timings in runs.items()}}  # fmt: skip


if __name__ == "__main__":
    print(run())  # noqa: T201
