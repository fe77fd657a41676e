"""Experiment overhead: a DVC experiment's wall time against a PyTorch script's, and where it goes.

Interleaved rounds: `dvc exp run` at a new learning rate (also at BENCH_BASE when set, the two in
alternating order), the peer, `dvc repro -f`, the peer at its length. Fixed seconds: wall less
the training steps' train logs."""

import contextlib
import os
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
    # MLflow and its store in the stage's process, TensorFlow in the training process: at once
    # since issue 38, one after the other before; the training waits for TensorFlow only.
    ("train: start-up: Python, MLflow, the store; TensorFlow", r"TensorFlow threads:"),
    ("train: first interval (graph tracing included)", r"iteration \d+/\d+:"),
    ("train: the other intervals", r"time in training steps"),
    ("train: ONNX export and check", r"exported .*\.onnx"),
    ("train: model logged and registered", r"run \w+: (registered|model logged)"),
    ("train: exit; DVC records the stage", r"> python -m pipeline\.evaluate"),
    ("evaluate: Python, MLflow, the store", r"tracking to "),
    ("evaluate: scoring, the gate, figures, model card, logging", r"gate: release checks"),
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


def experiment(scratch: Path, env: dict, rate: str) -> tuple[float, float, list]:
    """`dvc exp run` of SHORT iterations, workspace put back: wall, steps, stamped output."""
    wall, lines = stamped(["dvc", "exp", "run", "-S", f"train.iterations={SHORT}", "-S", rate],
                          scratch, env)  # fmt: skip
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], scratch, env)
    run(["dvc", "checkout", "-q"], scratch, env)
    steps = next(float(found[1]) for _, line in lines
                 if (found := re.search(r"time in training steps ([\d.]+) s", line)))  # fmt: skip
    return wall, steps, lines


def measure(rounds: int = 3) -> dict:
    base = os.environ.get("BENCH_BASE")
    with contextlib.ExitStack() as stack:
        scratches = {"": stack.enter_context(scratch_repo("bench-overhead-", baseline=True))}
        if base:
            scratches["base_"] = stack.enter_context(
                scratch_repo("bench-overhead-base-", baseline=True, revision=base))  # fmt: skip
        times: dict[str, list[float]] = {"short": [], "peer_short": [], "full": [], "peer_full": []}
        figures: dict = {"times": times, "base": base}
        for round_ in range(rounds):
            rate = f"train.learning_rate={0.0011 + 0.0001 * round_:.4f}"  # new each round
            # Which goes first alternates: the first runs just after the last round's full
            # trainings and pays for that (slower for a few seconds after), not the second.
            order = list(scratches.items())
            for key, (scratch, env) in order if round_ % 2 == 0 else order[::-1]:
                wall, steps, lines = experiment(scratch, env, rate)
                times.setdefault(f"{key}short", []).append(wall)
                times.setdefault(f"{key}fixed", []).append(wall - steps)
                figures.setdefault(f"{key}profile", phases(lines))
            scratch, env = scratches[""]
            times["peer_short"].append(peer(SHORT))
            times["full"].append(stamped(["dvc", "repro", "-f"], scratch, env)[0])
            times["peer_full"].append(peer(FULL))
            done = ", ".join(f"{name} {values[-1]:.1f} s" for name, values in times.items())
            print(f"  round {round_ + 1}: {done}", flush=True)  # noqa: T201
    return figures


def table(overhead: dict) -> list[str]:
    """Medians and ratios against the goals, then the phase profile (and the base's)."""
    median = {name: statistics.median(values) for name, values in overhead["times"].items()}
    base = overhead.get("base")
    rows = [[f"`dvc exp run`, {SHORT} iterations", "short", "short", "≤ 2.5×"],
            *([[f"the same at {base}", "base_short", "short", ""]] if base else []),
            [f"`dvc repro -f`, {FULL} iterations", "full", "full", "≤ 1.75×"]]  # fmt: skip
    rows = [[what, f"{median[key]:.1f}", f"{median['peer_' + peer]:.1f}",
             f"**{median[key] / median['peer_' + peer]:.2f}×**", goal]
            for what, key, peer, goal in rows]  # fmt: skip
    if base:
        ratio = median["fixed"] / median["base_fixed"]
        rows.append([f"`dvc exp run`'s fixed seconds (wall less training steps); {base}: "
                     f"{median['base_fixed']:.1f}", f"{median['fixed']:.1f}", "",
                     f"**{ratio:.2f}×** {base}'s", "≤ 0.67×"])  # fmt: skip
    profiles = [overhead["profile"], *([overhead["base_profile"]] if base else [])]
    seconds = [{name: f"{value:.1f}" for name, value in profile} for profile in profiles]
    return ["## Experiment overhead: a DVC experiment against a PyTorch script", "",
            f"Medians of {len(overhead['times']['short'])} interleaved rounds. The PyTorch script "
            "loads MNIST, trains the same LSTM at batch 128 and scores the 10,000 test images.",
            "", *markdown.table(["what", "seconds", "PyTorch script, seconds", "ratio", "goal"],
                                rows), "",
            f"Where the first `dvc exp run` of {SHORT} iterations spends its time:", "",
            *markdown.table(["phase", "seconds", *([f"{base}, seconds"] if base else [])],
                            [[name, *(each.get(name, "–") for each in seconds)]
                             for name, _ in PHASES if name in seconds[0]])]  # fmt: skip
