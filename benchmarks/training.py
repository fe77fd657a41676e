"""Training against PyTorch (benchmarks/contenders.py, interleaved): steady-state throughput, then
the training time each needs to reach the reference tutorial's test accuracy."""

import statistics

from benchmarks import contenders, markdown
from benchmarks.scratch import REPO

REPEATS, ITERATIONS = 3, 600  # throughput
TARGET, MAX_ITERATIONS, SEEDS = 0.9786, 3000, (0, 1, 2)  # the reference tutorial's accuracy


def measure() -> dict:
    from pipeline.params import config

    batch_size = config.load_params(REPO / "params.yaml").train.batch_size  # the contenders' too
    return {"batch_size": batch_size, "samples_per_s": throughput(batch_size),
            "time_to_accuracy": time_to_accuracy()}  # fmt: skip


def throughput(batch_size: int) -> dict[str, list[float]]:
    """Samples/s per repeat; the first 100 iterations (tracing, warm-up) are left out."""
    rates: dict[str, list[float]] = {name: [] for name in contenders.CONTENDERS}
    for repeat in range(REPEATS):
        for name in rates:  # interleaved, so drift hits every contender alike
            first, *_, last = contenders.checkpoints(name, "--iterations", str(ITERATIONS))
            iterations = last["iteration"] - first["iteration"]
            rates[name].append(iterations * batch_size / (last["seconds"] - first["seconds"]))
            print(f"  repeat {repeat + 1}/{REPEATS} {name}: {rates[name][-1]:,.0f} samples/s",  # noqa: T201
                  flush=True)  # fmt: skip
    return rates


def time_to_accuracy() -> dict[str, list[dict]]:
    """Per seed: training seconds until test accuracy first reaches TARGET (every 100 it.)."""
    found: dict[str, list[dict]] = {name: [] for name in contenders.CONTENDERS}
    for seed in SEEDS:
        for name in found:
            rows = contenders.checkpoints(name, "--iterations", str(MAX_ITERATIONS), "--accuracy",
                                          "--seed", str(seed))  # fmt: skip
            hit = next((row for row in rows if row["accuracy"] >= TARGET), None)
            at_2000 = next((row["accuracy"] for row in rows if row["iteration"] == 2000), None)
            found[name].append({"seed": seed, "seconds": hit and hit["seconds"],
                                "iteration": hit and hit["iteration"],
                                "accuracy_at_2000": at_2000})  # fmt: skip
            print(f"  {name}: {found[name][-1]}", flush=True)  # noqa: T201
    return found


def table(results: dict) -> list[str]:
    batch, rates = results["batch_size"], results["samples_per_s"]
    median = {name: statistics.median(values) for name, values in rates.items()}
    rows = [[name, f"{median[name]:,.0f}", f"{min(values):,.0f}", f"{max(values):,.0f}",
             f"{batch * 1000 / median[name]:.2f}"] for name, values in rates.items()]  # fmt: skip
    header = ["contender", "samples/s median", "min", "max", "ms/iteration"]
    return ["## Training against PyTorch", "", f"### Throughput (batch {batch}, steady state)",
            "", *markdown.table(header, rows), "",
            f"project / peer **{median['project'] / median['peer']:.2f}×**.", "",
            *accuracy_table(results["time_to_accuracy"])]  # fmt: skip


def accuracy_table(found: dict[str, list[dict]]) -> list[str]:
    """Time and iterations to TARGET: median over seeds, with min and max."""
    rows = []
    for name, runs in found.items():
        seconds = [run["seconds"] for run in runs if run["seconds"]]
        counts = [run["iteration"] for run in runs if run["iteration"]]
        at_2000 = [run["accuracy_at_2000"] for run in runs if run["accuracy_at_2000"]]
        missed = f" ({len(runs) - len(seconds)} seed(s) missed it)" * (len(seconds) < len(runs))
        rows.append([name, f"{statistics.median(seconds):.1f}{missed}", f"{min(seconds):.1f}",
                     f"{max(seconds):.1f}", f"{statistics.median(counts):.0f}", min(counts),
                     max(counts), f"{statistics.median(at_2000):.4f}"] if seconds
                    else [name, "not reached", *[""] * 6])  # fmt: skip
    seeds = ", ".join(str(run["seed"]) for run in found["project"])
    header = ["contender", "seconds median", "min", "max", "iterations median", "min", "max",
              "accuracy at 2000, median"]  # fmt: skip
    lines = [f"### Time to {TARGET:.2%} test accuracy (training time, checks every 100 "
             f"iterations, seeds {seeds})", "", *markdown.table(header, rows)]  # fmt: skip
    reached = [run["seconds"] for name in ("project", "peer") for run in found[name]]
    if None not in reached:
        project, peer = (statistics.median(run["seconds"] for run in found[name])
                         for name in ("project", "peer"))  # fmt: skip
        lines += ["", f"Median of seeds: project / peer **{project / peer:.2f}×** (lower: faster)."]
    return lines
