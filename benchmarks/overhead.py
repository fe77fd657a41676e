"""Experiment overhead: a DVC experiment's wall time against a PyTorch script's, and where it goes.

In a scratch copy of the repo with a committed baseline, three rounds of, interleaved: `dvc exp
run -S train.iterations=200 -S train.learning_rate=<new each round>` (nothing DVC's run cache can
restore; the workspace is put back after it), the PyTorch script at 200 iterations (`python -m
benchmarks.contenders peer --accuracy`: loads MNIST, trains the same LSTM at batch 128, scores the
10,000 test images), `dvc repro -f` at default params, the script at 2000 iterations. Medians of
the rounds; the first experiment's output, each line timestamped, gives the phase profile (the
stages' own log lines mark the phases).
"""

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import markdown
from benchmarks.scratch import run, scratch_repo

SHORT, FULL = 200, 2000
# (phase, the output line that ends it); a phase missing from the output is left out.
PHASES = [
    ("DVC: start, stash, upstream stages checked", r"> python -m pipeline\.train"),
    ("train: Python, MLflow, the store", r"tracking to "),
    ("train: TensorFlow loaded and set up", r"TensorFlow threads:"),
    ("train: first interval (graph tracing included)", r"iteration \d+/\d+:"),
    ("train: the other intervals", r"time in training steps"),
    ("train: ONNX export and check", r"exported .*\.onnx"),
    ("train: model logged and registered", r"run \w+: (registered|model logged)"),
    ("train: exit; DVC records the stage", r"> python -m pipeline\.evaluate"),
    ("evaluate: Python, MLflow, the store", r"tracking to "),
    ("evaluate: scoring, the gate, figures, model card, logging", r"gate (passed|failed)\. "),
    ("evaluate: exit; DVC commits the experiment", r"^\Z"),  # the end of the output
]


def stamped(command: list[str], cwd: Path, env: dict) -> tuple[float, list[tuple[float, str]]]:
    """Run `command`; its wall seconds and each output line with the second it appeared."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines = [(time.perf_counter() - started, line.rstrip()) for line in process.stdout]
    if process.wait() != 0:
        tail = "\n".join(line for _, line in lines[-20:])
        raise RuntimeError(f"{' '.join(command)} failed:\n{tail}")
    wall = time.perf_counter() - started
    return wall, [*lines, (wall, "")]


def phases(lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """Seconds per phase, from the timestamped output of one `dvc exp run`."""
    found, previous, position = [], 0.0, 0
    for name, pattern in PHASES:
        marker = re.compile(pattern)
        for index in range(position, len(lines)):
            if marker.search(lines[index][1]):
                found.append((name, lines[index][0] - previous))
                previous, position = lines[index][0], index + 1
                break
    return found


def peer(iterations: int) -> float:
    return run([sys.executable, "-m", "benchmarks.contenders", "peer", "--iterations",
                str(iterations), "--every", str(iterations), "--accuracy"])  # fmt: skip


def measure(rounds: int = 3) -> dict:
    with scratch_repo("bench-overhead-", baseline=True) as (scratch, env):
        times: dict[str, list[float]] = {"short": [], "peer_short": [], "full": [], "peer_full": []}
        profile = []
        for round_ in range(rounds):
            rate = f"train.learning_rate={0.0011 + 0.0001 * round_:.4f}"  # new each round
            wall, lines = stamped(["dvc", "exp", "run", "-S", f"train.iterations={SHORT}",
                                   "-S", rate], scratch, env)  # fmt: skip
            times["short"].append(wall)
            profile = profile or phases(lines)
            run(["git", "checkout", "--", "params.yaml", "dvc.lock"], scratch, env)
            run(["dvc", "checkout", "-q"], scratch, env)
            times["peer_short"].append(peer(SHORT))
            times["full"].append(stamped(["dvc", "repro", "-f"], scratch, env)[0])
            times["peer_full"].append(peer(FULL))
            done = ", ".join(f"{name} {values[-1]:.1f} s" for name, values in times.items())
            print(f"  round {round_ + 1}: {done}", flush=True)  # noqa: T201
    return {"times": times, "profile": profile}


def table(overhead: dict) -> list[str]:
    """Medians and ratios against the goals, then the phase profile."""
    median = {name: statistics.median(values) for name, values in overhead["times"].items()}
    rows = [[f"`dvc exp run`, {SHORT} iterations", "short", "≤ 2.5×"],
            [f"`dvc repro -f`, {FULL} iterations", "full", "≤ 1.75×"]]  # fmt: skip
    rows = [[what, f"{median[key]:.1f}", f"{median['peer_' + key]:.1f}",
             f"**{median[key] / median['peer_' + key]:.2f}×**", goal]
            for what, key, goal in rows]  # fmt: skip
    return ["## Experiment overhead: a DVC experiment against a PyTorch script", "",
            f"Medians of {len(overhead['times']['short'])} interleaved rounds. The PyTorch script "
            "loads MNIST, trains the same LSTM at batch 128 and scores the 10,000 test images.",
            "", *markdown.table(["what", "seconds", "PyTorch script, seconds", "ratio", "goal"],
                                rows), "",
            f"Where the first `dvc exp run` of {SHORT} iterations spends its time:", "",
            *markdown.table(["phase", "seconds"], [[name, f"{seconds:.1f}"] for name, seconds
                                                   in overhead["profile"]])]  # fmt: skip
