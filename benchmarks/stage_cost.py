"""The train stage against a PyTorch peer doing the same work: cost per iteration (the slope of
wall time from SHORT to LONG iterations, so start-up cancels out), whole runs."""

import json
import sys
from pathlib import Path

import yaml

from benchmarks import markdown
from benchmarks.scratch import run, scratch_repo

SHORT, LONG = 200, 2000


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
    wall = run(command, scratch, env)
    steps, validation = logged_times(scratch)
    return {"wall": wall, "steps": steps, "validation": validation, "outside": wall - steps}


def measure() -> dict:
    """Both contenders at SHORT and LONG iterations, interleaved."""
    runs: dict[str, dict[str, dict]] = {"stage": {}, "peer": {}}
    with scratch_repo("bench-stage-") as (scratch, env):
        run(["dvc", "repro", "-q", "preprocess"], scratch, env)
        for iterations in (SHORT, LONG):
            stage_run = runs["stage"][str(iterations)] = stage(scratch, env, iterations)
            # the peer validates as the stage does; the wall time of its whole process
            peer = [sys.executable, "-m", "benchmarks.contenders", "peer", "--iterations",
                    str(iterations), "--validate"]  # fmt: skip
            peer_run = runs["peer"][str(iterations)] = {"wall": run(peer)}
            print(f"  {iterations} iterations: stage {stage_run['wall']:.1f} s, "  # noqa: T201
                  f"peer {peer_run['wall']:.1f} s", flush=True)  # fmt: skip
    slope = {name: 1000 * (walls[str(LONG)]["wall"] - walls[str(SHORT)]["wall"])
             / (LONG - SHORT) for name, walls in runs.items()}  # fmt: skip
    return {"short": SHORT, "long": LONG, "ms_per_iteration": slope, "runs": runs}


def table(cost: dict) -> list[str]:
    """Slopes and whole runs of both; the stage's time outside its training steps."""
    short, long, slope, runs = cost["short"], cost["long"], cost["ms_per_iteration"], cost["runs"]
    names = {"stage": "train stage", "peer": "PyTorch peer, validating"}
    rows = [[name, f"{slope[key]:.2f}", f"{runs[key][str(short)]['wall']:.1f}",
             f"{runs[key][str(long)]['wall']:.1f}"] for key, name in names.items()]  # fmt: skip
    header = ["contender", "ms per iteration", f"wall, {short} it.",
              f"wall, {long} it. (whole run)"]  # fmt: skip
    whole = runs["stage"][str(long)]
    return ["## The train stage against a peer that validates the same way", "",
            "Both score the 5,000 validation images every 100 iterations. Cost per iteration: the "
            f"slope of the whole process's wall time from {short} to {long} iterations.", "",
            *markdown.table(header, rows), "",
            f"The train stage at {long} iterations: {whole['wall']:.1f} s, of which training steps "
            f"{whole['steps']:.1f} s; outside them **{whole['outside']:.1f} s** (validation "
            f"{whole['validation']:.1f} s of it). Cost per iteration, validation included: peer "
            f"/ stage **{slope['peer'] / slope['stage']:.2f}×** (above 1: the stage is faster).",
            ]  # fmt: skip
