"""`make bench-distributed`: two local workers (train.distribution: multi_worker) pinned to a core
each, against one process, alternately, on data/processed; writes benchmarks/DISTRIBUTED.md."""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from benchmarks import markdown
from benchmarks.scratch import REPO, free_port
from pipeline.runtime.processes import environment_without
from pipeline.tracking.lineage import cpu_description

DATA = REPO / "data/processed"
PROGRESS = re.compile(r"^(\d\d:\d\d:\d\d) INFO .*(TensorFlow threads|iteration (\d+)/(\d+))")


def params_in(root: Path, distribution: str) -> Path:
    """The repo's params, splits read from DATA, outputs under `root`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["distribution"] = distribution
    raw["paths"] = {key: str(root / value) for key, value in raw["paths"].items()}
    for split in ("train", "val", "test"):
        raw["paths"][f"{split}_split"] = str(DATA / f"{split}.npz")
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def launch(root: Path, tf_config: dict | None, core: int | None) -> subprocess.Popen:
    """`python -m pipeline.train` for the params in `root`, pinned to `core` if given."""
    env = environment_without("MLFLOW_", "DVC_", "TF_") | {"DVC_ROOT": str(root),
                                                          "PYTHONPATH": str(REPO)}  # fmt: skip
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    with open(root / "train.log", "w") as output:
        return subprocess.Popen([sys.executable, "-m", "pipeline.train", "--params",
                                 str(params_in(root, "multi_worker" if tf_config else "none"))],
                                cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                preexec_fn=pin)  # fmt: skip


def run_training(workers: int) -> dict:
    """One training, as one process (workers 1) or as `workers` pinned processes."""
    roots = [Path(tempfile.mkdtemp(prefix=f"dist-{workers}-{index}-")) for index in range(workers)]
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in roots]}
    started, processes = time.monotonic(), []
    try:
        for index, root in enumerate(roots):
            task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            processes.append(launch(root, task if workers > 1 else None,
                                    index if workers > 1 else None))  # fmt: skip
        codes = [process.wait(timeout=1800) for process in processes]
        wall, log = time.monotonic() - started, (roots[0] / "train.log").read_text()
        if codes != [0] * workers:
            raise SystemExit(f"error: training with {workers} worker(s) failed {codes}:\n"
                             f"{log[-3000:]}")  # fmt: skip
        return {"workers": workers, "wall_s": wall, "train_s": training_seconds(log),
                "test_accuracy": test_accuracy(roots[0] / "models/model.keras")}  # fmt: skip
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def training_seconds(log: str) -> float:
    """From the thread-pool line (before the strategy and the network) to the last iteration."""
    stamps = [m.group(1) for line in log.splitlines() if (m := PROGRESS.match(line))]
    first, last = (datetime.strptime(stamp, "%H:%M:%S") for stamp in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def test_accuracy(model_file: Path) -> float:
    import keras

    model = keras.saving.load_model(model_file)
    with np.load(DATA / "test.npz") as test:
        x, y = test["x"], test["y"]
    predicted = np.concatenate([np.asarray(model.predict_on_batch(x[i : i + 1000])).argmax(1)
                                for i in range(0, len(x), 1000)])  # fmt: skip
    return float((predicted == y).mean())


def results(runs: list[dict]) -> str:
    """DISTRIBUTED.md: the machine and the settings, then a row per run."""
    import tensorflow as tf

    rows = [["2 workers (1 core each)" if run["workers"] > 1 else "1 process (2 cores)",
             f"{run['wall_s']:.1f}", f"{run['train_s']:.0f}", f"{run['test_accuracy']:.4f}"]
            for run in runs]  # fmt: skip
    return "\n".join([
        "# Two local workers against one process (`python -m benchmarks.distributed`)", "",
        f"{datetime.now():%Y-%m-%d %H:%M}; {cpu_description()[0]}, {os.cpu_count()} cores, "
        f"TensorFlow {tf.__version__}, Python {platform.python_version()}; default params.yaml "
        "(2000 iterations, global batch 128). Wall: process start to the last exit; training: "
        "first to last progress line (1 s resolution). Shared machine: timings are noisy.", "",
        *markdown.table(["run", "wall s", "training s", "test accuracy"], rows), ""])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if not (DATA / "train.npz").is_file():
        raise SystemExit(f"error: no {DATA / 'train.npz'}; run `make repro`")
    runs = []
    for _ in range(args.repeats):
        for workers in (1, 2):
            runs.append(run_training(workers))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # noqa: T201
    text = results(runs)
    (REPO / "benchmarks" / "DISTRIBUTED.md").write_text(text)
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
