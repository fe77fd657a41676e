"""Experiment overhead: a DVC experiment's wall time against a PyTorch script's, and where it goes.

In a scratch copy of the repo (data from `make repro`), after a baseline `dvc repro` at default
params, committed, three rounds of, interleaved:
- short: `dvc exp run -S train.iterations=200 -S train.learning_rate=<a new value>`, a params
  change DVC's run cache cannot restore; the workspace is then put back to the baseline;
- the PyTorch script at 200 iterations: loads MNIST, trains the same LSTM at batch 128, scores
  the 10,000 test images (`python -m benchmarks.contenders peer --accuracy`);
- full: `dvc repro -f` at default params, every stage;
- the PyTorch script at 2000 iterations.
Medians of the rounds; the first short experiment's output, each line timestamped, gives the
phase profile (the stages' own log lines mark the phases).
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.scratch import REPO, scratch_repo

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


def peer(iterations: int, env: dict) -> float:
    command = [sys.executable, "-m", "benchmarks.contenders", "peer", "--iterations",
               str(iterations), "--every", str(iterations), "--accuracy"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def quiet(command: list[str], cwd: Path, env: dict) -> None:
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)


def run(rounds: int = 3) -> dict:
    scratch, env = scratch_repo("bench-overhead-")
    try:
        for command in (["dvc", "repro", "-q"], ["git", "add", "-A"],
                        ["git", "commit", "-qm", "baseline"]):  # fmt: skip
            quiet(command, scratch, env)
        times: dict[str, list[float]] = {"short": [], "peer_short": [], "full": [], "peer_full": []}
        profile = []
        for round_ in range(rounds):
            rate = f"train.learning_rate={0.0011 + 0.0001 * round_:.4f}"  # new each round
            wall, lines = stamped(["dvc", "exp", "run", "-S", f"train.iterations={SHORT}",
                                   "-S", rate], scratch, env)  # fmt: skip
            times["short"].append(wall)
            profile = profile or phases(lines)
            quiet(["git", "checkout", "--", "params.yaml", "dvc.lock"], scratch, env)
            quiet(["dvc", "checkout", "-q"], scratch, env)
            times["peer_short"].append(peer(SHORT, env))
            times["full"].append(stamped(["dvc", "repro", "-f"], scratch, env)[0])
            times["peer_full"].append(peer(FULL, env))
            done = ", ".join(f"{name} {values[-1]:.1f} s" for name, values in times.items())
            print(f"  round {round_ + 1}: {done}", flush=True)  # noqa: T201
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"times": times, "profile": profile}


def per_hour(rows: list[dict] | None, workers: int) -> float | None:
    row = next((r for r in rows or [] if r["workers"] == workers), None)
    return row["per_hour"] if row else None


def table(overhead: dict, sweeps: list[dict] | None, tuning: list[dict] | None) -> list[str]:
    """The section for RESULTS.md: medians, ratios against the goals, the phase profile."""
    median = {name: statistics.median(values) for name, values in overhead["times"].items()}
    short, full = median["short"] / median["peer_short"], median["full"] / median["peer_full"]
    n = len(overhead["times"]["short"])
    lines = [
        "",
        "## Experiment overhead: a DVC experiment against a PyTorch script",
        "",
        f"Medians of {n} interleaved rounds. The PyTorch script loads MNIST, trains the same LSTM "
        "at batch 128 and scores the 10,000 test images.",
        "",
        "| what | seconds | PyTorch script, seconds | ratio | goal |",
        "|---|---|---|---|---|",
        f"| `dvc exp run`, {SHORT} iterations | {median['short']:.1f} | "
        f"{median['peer_short']:.1f} | **{short:.2f}×** | ≤ 2.5× |",
        f"| `dvc repro -f`, {FULL} iterations | {median['full']:.1f} | "
        f"{median['peer_full']:.1f} | **{full:.2f}×** | ≤ 1.75× |",
    ]
    previous = overhead.get("previous", {})
    comparisons = [
        ("queued sweep, `-j 1`, experiments/hour", per_hour(sweeps, 1),
         per_hour(previous.get("sweeps"), 1)),
        ("queued sweep, `-j 2`, experiments/hour", per_hour(sweeps, 2),
         per_hour(previous.get("sweeps"), 2)),
        ("`make tune`, 1 worker, trials/hour", per_hour(tuning, 1),
         per_hour(previous.get("tuning"), 1)),
    ]  # fmt: skip
    rows = [(what, now, before) for what, now, before in comparisons if now and before]
    if rows:
        lines += ["", f"Against the `make bench` before this one ({previous.get('date', '?')}, "
                  f"{previous.get('cpu', '?')}); goal: at least 2×.", "",
                  "| what | before | now | ratio |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {what} | {before:.0f} | {now:.0f} | **{now / before:.2f}×** |"
                  for what, now, before in rows]  # fmt: skip
    lines += ["", f"Where the first `dvc exp run` of {SHORT} iterations spends its time:", "",
              "| phase | seconds |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in overhead["profile"]]
    return lines


def main() -> None:
    results = run()
    print("\n".join(table(results, None, None)))  # noqa: T201


if __name__ == "__main__":
    main()
