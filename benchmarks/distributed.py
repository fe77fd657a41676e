"""Two local workers (train.distribution: multi_worker) against one process, default params.

`python -m benchmarks.distributed [--data DIR] [--repeats N]` runs `python -m pipeline.train`
once as one process (all cores) and once as two workers on 127.0.0.1, each pinned to its own
core, alternately, each in a scratch folder with its own MLflow store; it reads the processed
splits from DIR (default data/processed, as `make repro` leaves them). It reports the wall
time of each (start to the last process's exit, MLflow logging and registration included),
the training time (the first to the last progress line of the stage's log, 1 s resolution)
and the test accuracy of the model the chief saved, and writes benchmarks/DISTRIBUTED.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from pipeline.runtime.processes import environment_without
from pipeline.tracking.lineage import cpu_description
from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "DISTRIBUTED.md"
PROGRESS = re.compile(r"^(\d\d:\d\d:\d\d) INFO .*(TensorFlow threads|iteration (\d+)/(\d+))")


def params_in(root: Path, data: Path, distribution: str) -> Path:
    """The repo's params, splits read from `data`, outputs under `root`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["distribution"] = distribution
    raw["paths"] = {key: str(root / value) for key, value in raw["paths"].items()}
    for split in ("train", "val", "test"):
        raw["paths"][f"{split}_split"] = str(data / f"{split}.npz")
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def environment(root: Path, **extra: str) -> dict[str, str]:
    env = environment_without("MLFLOW_", "DVC_", "TF_")
    return env | {"DVC_ROOT": str(root), "PYTHONPATH": str(REPO)} | extra


def launch(root: Path, env: dict[str, str], core: int | None) -> tuple[subprocess.Popen, Path]:
    """`python -m pipeline.train` for the params in `root`, pinned to `core` if given."""
    log = root / "train.log"
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.train", "--params", str(root / "params.yaml")],
            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, preexec_fn=pin,
        )  # fmt: skip
    return process, log


def run_training(data: Path, workers: int) -> dict:
    """One training, as one process (workers 1) or as `workers` pinned processes."""
    roots = [Path(tempfile.mkdtemp(prefix=f"dist-{workers}-{index}-")) for index in range(workers)]
    distribution = "none" if workers == 1 else "multi_worker"
    ports = [free_port() for _ in roots]
    started = time.monotonic()
    processes = []
    try:
        for index, root in enumerate(roots):
            params_in(root, data, distribution)
            extra = {}
            if workers > 1:
                cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
                extra["TF_CONFIG"] = json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                )
            processes.append(
                launch(root, environment(root, **extra), index if workers > 1 else None)
            )
        codes = [process.wait(timeout=1800) for process, _ in processes]
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.monotonic() - started
    chief_log = processes[0][1].read_text()
    if codes != [0] * workers:
        raise SystemExit(f"error: training with {workers} worker(s) failed {codes}:\n"
                         f"{chief_log[-3000:]}")  # fmt: skip
    return {"workers": workers, "wall_s": wall, "train_s": training_seconds(chief_log),
            "test_accuracy": test_accuracy(roots[0] / "models/model.keras", data),
            "chief_root": str(roots[0])}  # fmt: skip


def training_seconds(log: str) -> float:
    """From the thread-pool line (before the strategy and the network) to the last iteration."""
    stamps = [m.group(1) for line in log.splitlines() if (m := PROGRESS.match(line))]
    first, last = (datetime.strptime(stamp, "%H:%M:%S") for stamp in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def test_accuracy(model_file: Path, data: Path) -> float:
    import keras

    model = keras.saving.load_model(model_file)
    with np.load(data / "test.npz") as test:
        x, y = test["x"], test["y"]
    predicted = np.concatenate([np.asarray(model.predict_on_batch(x[i : i + 1000])).argmax(1)
                                for i in range(0, len(x), 1000)])  # fmt: skip
    return float((predicted == y).mean())


def machine() -> dict[str, str]:
    import tensorflow as tf

    return {"cpu": cpu_description()[0], "cores": str(os.cpu_count()),
            "tensorflow": tf.__version__, "python": platform.python_version()}  # fmt: skip


def write_results(runs: list[dict], host: dict[str, str]) -> str:
    rows = "\n".join(
        f"| {'2 workers (1 core each)' if r['workers'] > 1 else '1 process (2 cores)'} "
        f"| {r['wall_s']:.1f} | {r['train_s']:.0f} | {r['test_accuracy']:.4f} |"
        for r in runs
    )
    text = (
        f"# Two local workers against one process (`python -m benchmarks.distributed`)\n\n"
        f"{datetime.now():%Y-%m-%d %H:%M}; {host['cpu']}, {host['cores']} cores, TensorFlow "
        f"{host['tensorflow']}, Python {host['python']}; default params.yaml (2000 iterations, "
        f"global batch 128). Wall: process start to the last exit; training: first to last "
        f"progress line (1 s resolution). Shared machine: timings are noisy.\n\n"
        f"| run | wall s | training s | test accuracy |\n|---|---|---|---|\n{rows}\n"
    )
    RESULTS.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data/processed")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if not (args.data / "train.npz").is_file():
        raise SystemExit(f"error: no {args.data / 'train.npz'}; run `make repro` or pass --data")
    runs = []
    for _ in range(args.repeats):
        for workers in (1, 2):
            runs.append(run_training(args.data.resolve(), workers))
            sys.stderr.write(f"{json.dumps(runs[-1])}\n")
    sys.stdout.write(write_results(runs, machine()))


if __name__ == "__main__":
    main()
