"""`make bench`: training speed against PyTorch and a plain Keras port, plus the pipeline around it.

Everything is measured in this one invocation on this machine; contenders are interleaved and
each measurement runs in a fresh process. Results print as tables and go to benchmarks/RESULTS.md.
Run it after `make repro` (it reads data/processed/ and models/model.keras).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import overhead, stage_cost, sweep, tuning
from benchmarks.scratch import REPO, scratch_repo
from pipeline.tracking.lineage import cpu_description

TARGET = 0.9786  # the reference tutorial's test accuracy
CONTENDERS = ("project", "peer", "naive")


def contender(name: str, *args: str) -> list[dict]:
    """Run one contender in its own process; return its checkpoints."""
    command = [sys.executable, "-m", "benchmarks.contenders", name, *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["checkpoints"]


def throughput(repeats: int, iterations: int, batch_size: int) -> dict[str, list[float]]:
    """Steady-state samples/s: the first 100 iterations (tracing, warm-up) are left out."""
    samples = {name: [] for name in CONTENDERS}
    for repeat in range(repeats):
        for name in CONTENDERS:  # interleaved, so drift hits every contender alike
            rows = contender(name, "--iterations", str(iterations), "--every", "100")
            first, last = rows[0], rows[-1]
            rate = (
                (last["iteration"] - first["iteration"])
                * batch_size
                / (last["seconds"] - first["seconds"])
            )
            samples[name].append(rate)
            print(f"  repeat {repeat + 1}/{repeats} {name}: {rate:,.0f} samples/s", flush=True)  # noqa: T201
    return samples


def time_to_accuracy(max_iterations: int, seeds: list[int]) -> dict[str, list[dict]]:
    """Per seed: training seconds (evaluation excluded) until test accuracy first reaches
    TARGET, checked every 100 iterations; project and peer interleaved seed by seed."""
    found: dict[str, list[dict]] = {"project": [], "peer": []}
    for seed in seeds:
        for name in found:
            rows = contender(name, "--iterations", str(max_iterations), "--every", "100",
                             "--accuracy", "--seed", str(seed))  # fmt: skip
            hit = next((row for row in rows if row["accuracy"] >= TARGET), None)
            at_2000 = next((row["accuracy"] for row in rows if row["iteration"] == 2000), None)
            found[name].append({"seed": seed, "seconds": hit and hit["seconds"],
                                "iteration": hit and hit["iteration"],
                                "accuracy_at_2000": at_2000})  # fmt: skip
            print(f"  {name}: {found[name][-1]}", flush=True)  # noqa: T201
    return found


def timed(command: list[str], cwd: Path, env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def pipeline_timings(scratch: Path, env: dict, repeats: int) -> dict[str, object]:
    """dvc repro in a scratch copy of the repo (its own MLflow store): full, no-op, per stage."""
    full = timed(["dvc", "repro"], scratch, env)
    noop = [timed(["dvc", "repro"], scratch, env) for _ in range(repeats)]
    startup = {
        stage: statistics.median(
            timed([sys.executable, "-m", f"pipeline.{stage}", "--help"], scratch, env)
            for _ in range(repeats)
        )
        for stage in ("fetch", "preprocess", "train", "evaluate")
    }
    startup["import tensorflow"] = statistics.median(
        timed([sys.executable, "-c", "import tensorflow"], scratch, env) for _ in range(repeats)
    )
    rss_probe = "import resource,subprocess,sys; subprocess.run(sys.argv[1:],check=True); " \
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"  # fmt: skip
    peak = subprocess.run([sys.executable, "-c", rss_probe, sys.executable, "-m",
                           "pipeline.train"], cwd=scratch, env=env, check=True,
                          capture_output=True, text=True)  # fmt: skip
    peak_mib = int(peak.stdout.strip().splitlines()[-1]) / 1024
    return {"full": full, "noop": noop, "startup": startup, "train_peak_rss_mib": peak_mib}


def latency(predict, batch: np.ndarray, repeats: int) -> dict[str, float]:
    predict(batch)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict(batch)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def inference(repeats: int) -> dict[str, dict]:
    """Batch-1 latency and batch-1000 throughput of the saved Keras model's calls (the
    registered pyfunc model is measured by benchmarks/serving.py, in the serving table)."""
    import keras

    from pipeline.data.files import load_arrays
    from pipeline.params import config

    params = config.load_params(REPO / "params.yaml")
    test = load_arrays(REPO / params.paths.split("test"))["x"]
    model = keras.saving.load_model(REPO / params.paths.model)
    callers = {
        "keras model(x)": lambda x: model(x, training=False),
        "keras model.predict(x)": lambda x: model.predict(x, verbose=0),
        "keras model.predict_on_batch(x)": model.predict_on_batch,
    }
    results = {}
    for name, predict in callers.items():
        single = latency(predict, test[:1], repeats)
        bulk = latency(predict, test[:1000], max(3, repeats // 20))
        results[name] = single | {"batch1000_per_s": 1000 / (bulk["p50_ms"] / 1000)}
    return results


def serving_in_a_fresh_process(scratch: Path, env: dict) -> dict:
    """benchmarks/serving.py in its own process, as every other contender runs: nothing loaded
    or run before it (Keras, PyTorch, the inference table's calls) shares its thread pools.

    It runs in the scratch copy `pipeline_timings` reproduced, whose champion is the model this
    code logs: this repo's champion is the best model ever trained here, maybe by older code.
    """
    # `--only serving`: reproduce it first, untimed (after `pipeline`, nothing to do). The copy
    # holds main's dvc.lock, the baseline, but none of its outputs.
    subprocess.run(["dvc", "repro", "-q"], cwd=scratch, env=env, check=True)
    command = [sys.executable, "-m", "benchmarks.serving"]
    result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    if result.returncode != 0:  # its own words, not only the exit status
        raise RuntimeError(f"benchmarks.serving failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> dict[str, str]:
    import keras
    import tensorflow as tf
    import torch

    cpu, flags = cpu_description()
    vector = [name for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"),
                                      ("avx2", "AVX2")) if flag in flags.split()]  # fmt: skip
    return {
        "cpu": cpu,
        "instruction sets": ", ".join(vector) or "none of AMX, AVX-512, AVX2",
        "cores": str(os.cpu_count()), "python": platform.python_version(),
        "tensorflow": tf.__version__, "keras": keras.__version__, "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
    }  # fmt: skip


def summarise(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def report(results: dict) -> str:
    """Markdown tables of everything measured, ratios last."""
    lines = [
        "# Benchmark results",
        "",
        f"Measured {results['date']} by `make bench`, in one run.",
        "",
    ]
    if len(set(results.get("measured", {}).values())) > 1:  # some sections from earlier runs
        lines += ["When each section was measured (`make bench ONLY=...` measures some again):",
                  ""] + [f"- {name.replace('_', ' ')}: {when}"
                         for name, when in results["measured"].items()] + [""]  # fmt: skip
    lines += ["| machine | |", "|---|---|"] + [
        f"| {k} | {v} |" for k, v in results["machine"].items()
    ]
    lines += [
        "",
        f"## Training throughput (batch {results['batch_size']}, steady state)",
        "",
        "| contender | samples/s median | min | max | ms/iteration |",
        "|---|---|---|---|---|",
    ]
    for name, values in results["throughput"].items():
        median, low, high = summarise(values)
        ms = results["batch_size"] * 1000 / median
        lines.append(f"| {name} | {median:,.0f} | {low:,.0f} | {high:,.0f} | {ms:.2f} |")
    lines += accuracy_table(results["time_to_accuracy"])
    if "stage_cost" in results:
        lines += stage_cost_table(results["stage_cost"], results["pipeline"]["full"],
                                  results["batch_size"] * 1000 / statistics.median(
                                      results["throughput"]["project"]))  # fmt: skip
    pipe = results["pipeline"]
    lines += [
        "",
        "## The pipeline around training",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| full `dvc repro` (data from a local copy) | {pipe['full']:.1f} |",
        f"| no-op `dvc repro` (median of {len(pipe['noop'])}) | best {min(pipe['noop']):.2f}, "
        f"{statistics.median(pipe['noop']):.2f} median |",
    ]
    lines += [
        f"| start-up: `python -m pipeline.{k} --help` | {v:.2f} |"
        if k != "import tensorflow"
        else f"| start-up: `import tensorflow` | {v:.2f} |"
        for k, v in pipe["startup"].items()
    ]
    lines += [f"| train stage peak RSS | {pipe['train_peak_rss_mib']:,.0f} MiB |"]
    lines += [
        "",
        "## Inference",
        "",
        "| caller | batch 1 p50 ms | batch 1 p99 ms | batch 1000 images/s |",
        "|---|---|---|---|",
    ]
    for name, row in results["inference"].items():
        p50, p99, bulk = row["p50_ms"], row["p99_ms"], row["batch1000_per_s"]
        lines.append(f"| {name} | {p50:.2f} | {p99:.2f} | {bulk:,.0f} |")
    if "serving" in results:
        lines += serving_table(results["serving"])
    if "overhead" in results:
        lines += overhead.table(results["overhead"], results.get("sweeps"), results.get("tuning"))
    if "sweeps" in results:
        lines += sweep_table(results["sweeps"])
    if "tuning" in results:
        lines += tuning_table(results["tuning"])
    rate = {name: statistics.median(values) for name, values in results["throughput"].items()}
    lines += [
        "",
        "## Ratios",
        "",
        f"- project / peer throughput: **{rate['project'] / rate['peer']:.2f}×**",
        f"- project / naive throughput: **{rate['project'] / rate['naive']:.2f}×**",
    ]
    reached = {name: median_seconds(runs) for name, runs in results["time_to_accuracy"].items()}
    if reached["project"] and reached["peer"]:
        project, peer = reached["project"], reached["peer"]
        lines.append(
            f"- time to {TARGET:.2%}, median of seeds: project {project:.1f} s, peer {peer:.1f} s "
            f"(project / peer **{project / peer:.2f}×**, lower is faster)"
        )
    if "stage_cost" in results:
        slope = results["stage_cost"]["ms_per_iteration"]
        lines.append(
            f"- cost per iteration, validation included: peer / stage "
            f"**{slope['peer'] / slope['stage']:.2f}×** (above 1: the stage is faster)"
        )
    return "\n".join(lines) + "\n"


def median_seconds(runs: list[dict]) -> float | None:
    """The median time to TARGET over seeds; None if any seed missed it."""
    seconds = [run["seconds"] for run in runs]
    return None if None in seconds else statistics.median(seconds)


def accuracy_table(found: dict[str, list[dict]]) -> list[str]:
    """Time and iterations to TARGET: median over seeds, with min and max."""
    seeds = ", ".join(str(run["seed"]) for run in next(iter(found.values())))
    lines = [
        "",
        f"## Time to {TARGET:.2%} test accuracy (training time, checks every 100 iterations, "
        f"seeds {seeds})",
        "",
        "| contender | seconds median | min | max | iterations median | min | max "
        "| accuracy at 2000, median |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in found.items():
        seconds = [run["seconds"] for run in runs if run["seconds"]]
        counts = [run["iteration"] for run in runs if run["iteration"]]
        at_2000 = [run["accuracy_at_2000"] for run in runs if run["accuracy_at_2000"]]
        missed = len(runs) - len(seconds)
        if not seconds:
            lines.append(f"| {name} | not reached | | | | | | |")
            continue
        s_med, s_min, s_max = summarise(seconds)
        i_med, i_min, i_max = summarise(counts)
        note = f" ({missed} seed(s) missed it)" if missed else ""
        lines.append(f"| {name} | {s_med:.1f}{note} | {s_min:.1f} | {s_max:.1f} | {i_med:.0f} "
                     f"| {i_min} | {i_max} | {statistics.median(at_2000):.4f} |")  # fmt: skip
    return lines


def stage_cost_table(cost: dict, full_repro: float, loop_ms: float) -> list[str]:
    """The train stage and the validating PyTorch peer: slopes, whole runs, time outside."""
    short, long = cost["short"], cost["long"]
    slope = cost["ms_per_iteration"]
    lines = [
        "",
        "## The train stage against a peer that validates the same way",
        "",
        "Both score the 5,000 validation images every 100 iterations. Cost per iteration: the "
        f"slope of the whole process's wall time from {short} to {long} iterations.",
        "",
        f"| contender | ms per iteration | wall, {short} it. | wall, {long} it. (whole run) |",
        "|---|---|---|---|",
    ]
    for key, name in (("stage", "train stage"), ("peer", "PyTorch peer, validating")):
        runs = cost["runs"][key]
        lines.append(f"| {name} | {slope[key]:.2f} | {runs[str(short)]['wall']:.1f} "
                     f"| {runs[str(long)]['wall']:.1f} |")  # fmt: skip
    run = cost["runs"]["stage"][str(long)]
    lines += [
        "",
        f"The train stage at {long} iterations: {run['wall']:.1f} s, of which training steps "
        f"{run['steps']:.1f} s; outside them **{run['outside']:.1f} s** (validation "
        f"{run['validation']:.1f} s of it). Full `dvc repro` {full_repro:.1f} s against the pure "
        f"loop's {long} × {loop_ms:.2f} ms = {long * loop_ms / 1000:.1f} s: "
        f"**{full_repro - long * loop_ms / 1000:.1f} s** over.",
    ]
    return lines


def sweep_table(rows: list[dict]) -> list[str]:
    """Experiments per hour of a queued sweep with 1 and 2 queue workers."""
    title = (f"Queued sweeps: {rows[0]['experiments']} experiments of {rows[0]['iterations']} "
             "iterations, `dvc exp run --queue` + `dvc queue start -j N`")  # fmt: skip
    table = [(row["workers"], row["succeeded"], row["experiments"], row["seconds"],
              row["per_hour"]) for row in rows]  # fmt: skip
    return per_hour_table(title, "experiments", table)


def per_hour_table(title: str, unit: str, rows: list[tuple]) -> list[str]:
    """Rows of (workers, done, of, seconds, per hour), then 2 workers against 1."""
    lines = ["", f"## {title}", "", f"| workers | {unit} done | seconds | {unit}/hour |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {workers} | {done} of {total} | {seconds:.0f} | {per_hour:.0f} |"
              for workers, done, total, seconds, per_hour in rows]  # fmt: skip
    if len(rows) == 2 and rows[0][4]:
        lines.append(f"\n2 workers / 1 worker: **{rows[1][4] / rows[0][4]:.2f}×**")
    return lines


def tuning_table(rows: list[dict]) -> list[str]:
    """Trials per hour of `make tune` with 1 and 2 worker processes on this machine."""
    title = ("Searches: `make tune` at the queued sweeps' points (trials of 200 iterations, "
             "each a DVC experiment)")  # fmt: skip
    table = [(row["workers"], row["completed"], row["trials"], row["seconds"], row["per_hour"])
             for row in rows]  # fmt: skip
    return per_hour_table(title, "trials", table)


SERVED = {"onnx": "ONNX model (registered now)", "tensorflow": "TensorFlow pyfunc (before)"}
SERVERS = {
    "onnx": "ONNX model, `make serve`",
    "onnx_mlflow": "ONNX model, MLflow's scoring server",
    "tensorflow": "TensorFlow pyfunc, MLflow's scoring server (before)",
}


def serving_table(serving: dict) -> list[str]:
    """The registered ONNX model beside the previous TensorFlow pyfunc: in-process, over HTTP,
    under load."""
    if "onnx" not in serving:  # RESULTS.json from before the ONNX model
        return []
    lines = [
        "",
        "## Serving the registered model: ONNX Runtime against the previous TensorFlow pyfunc",
        "",
        "Both over the same trained weights, each measured in fresh processes, interleaved. "
        "In-process: `mlflow.pyfunc.load_model` on the registered model.",
        "",
        "| model | cold start to first prediction s | memory then MiB | one image p50 ms | p99 ms "
        "| batch 1000 images/s | printed | TensorFlow loaded |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, name in SERVED.items():
        row = serving[key]["in_process"]
        lines.append(f"| {name} | {row['cold_start_s']:.2f} | "
                     f"{row['memory_at_first_prediction']['rss_mib']:.0f} | {row['p50_ms']:.3f} | "
                     f"{row['p99_ms']:.3f} | {row['batch1000_images_per_s']:,.0f} | "
                     f"{row['printed_chars']} chars | {row['tensorflow_loaded']} |")  # fmt: skip
    lines += [
        "",
        "Servers (POST /invocations, one image per request): process start to the first "
        "answer, first with no answer kept for `@champion` (MLflow resolves it in a child "
        "process, as after the alias moved outside the pipeline) and then at a restart with the "
        "store unchanged (as also after `make repro`, whose evaluate stage leaves the answer); "
        "one connection; then load tests from a second process; memory is the largest resident "
        "set among the server's processes after the load tests.",
        "",
        "| server | workers | start to first answer s | restart s | server RSS MiB "
        "| one image p50 ms | p99 ms | load: concurrency, errors, p50 ms, p99 ms, requests/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    present = {key: name for key, name in SERVERS.items() if key in serving}
    for index, _ in enumerate(serving["onnx"]["http"]):
        for key, name in present.items():
            row = serving[key]["http"][index]
            loads = "; ".join(f"{run['concurrency']}: {run['errors']}, {run['p50_ms']:.1f}, "
                              f"{run['p99_ms']:.1f}, {run['requests_per_s']:,.0f}"
                              for run in row["load"])  # fmt: skip
            restart = f"{row['restart_s']:.2f}" if "restart_s" in row else "-"
            lines.append(f"| {name} | {row['workers']} | {row['cold_start_s']:.2f} | {restart} | "
                         f"{row['memory']['rss_mib']:.0f} | {row['one_image']['p50_ms']:.2f} | "
                         f"{row['one_image']['p99_ms']:.2f} | {loads} |")  # fmt: skip
    onnx, tensorflow = serving["onnx"]["in_process"], serving["tensorflow"]["in_process"]
    web_onnx, web_tf = serving["onnx"]["http"][0], serving["tensorflow"]["http"][0]
    ratios = {
        "one image in-process, p50": tensorflow["p50_ms"] / onnx["p50_ms"],
        "batches of 1,000, images/s": (onnx["batch1000_images_per_s"]
                                       / tensorflow["batch1000_images_per_s"]),
        "one image over HTTP, p50": web_tf["one_image"]["p50_ms"] / web_onnx["one_image"]["p50_ms"],
        "server start to first answer": web_tf["cold_start_s"] / web_onnx["cold_start_s"],
        "server memory": web_tf["memory"]["rss_mib"] / web_onnx["memory"]["rss_mib"],
    }  # fmt: skip
    lines += [
        "",
        "TensorFlow pyfunc / ONNX model (above 1: ONNX is faster or smaller; servers with one "
        "worker): " + ", ".join(f"{what} **{ratio:.2f}×**" for what, ratio in ratios.items()) + ".",
    ]
    if "onnx_mlflow" in serving:
        web_mlflow = serving["onnx_mlflow"]["http"][0]
        lines += [
            "",
            "MLflow's scoring server / `make serve`, the same ONNX model, one worker: start to "
            f"first answer **{web_mlflow['cold_start_s'] / web_onnx['cold_start_s']:.2f}×** "
            f"(restart **{web_mlflow['restart_s'] / web_onnx['restart_s']:.2f}×**), memory "
            f"**{web_mlflow['memory']['rss_mib'] / web_onnx['memory']['rss_mib']:.2f}×**, one "
            "image p50 "
            f"**{web_mlflow['one_image']['p50_ms'] / web_onnx['one_image']['p50_ms']:.2f}×**.",
        ]
    if "logging" in serving:
        lines += logging_table(serving["logging"])
    return lines


def logging_table(logging: dict) -> list[str]:
    """`make serve` with the prediction log on and off (benchmarks/serving.py, logging_cost)."""
    lines = [
        "",
        "The prediction log's cost: `make serve` on the ONNX model with `monitor.log` on "
        "and off, both up at once; one image per request on one connection (alternating blocks), "
        "then load tests, alternating.",
        "",
        "| prediction log | one image p50 ms | p99 ms "
        "| load: concurrency, errors, p50 ms, requests/s | rows logged |",
        "|---|---|---|---|---|",
    ]
    for name in ("on", "off"):
        row = logging[name]
        loads = "; ".join(f"{run['concurrency']}: {run['errors']}, {run['p50_ms']:.1f}, "
                          f"{run['requests_per_s']:,.0f}" for run in row["load"])  # fmt: skip
        single = row["one_image"]
        lines.append(f"| {name} | {single['p50_ms']:.2f} | {single['p99_ms']:.2f} | {loads} "
                     f"| {row['logged_rows']:,} |")  # fmt: skip
    rate = {name: statistics.median(run["requests_per_s"] for run in logging[name]["load"])
            for name in ("on", "off")}  # fmt: skip
    p50 = {name: logging[name]["one_image"]["p50_ms"] for name in ("on", "off")}
    lines += ["", f"Log on / off: one image p50 **{p50['on'] / p50['off']:.2f}×**, "
                  f"requests/s under load **{rate['on'] / rate['off']:.2f}×**."]  # fmt: skip
    return lines


def earlier_throughput(saved: dict, cpu: str) -> dict:
    """The sweep and search figures the overhead goals compare with: those kept as the
    baseline by an earlier overhead run on this CPU kind, else the last run's on it."""
    kept = saved.get("overhead", {}).get("previous") or {}
    if kept.get("cpu") == cpu:
        return kept
    if saved.get("machine", {}).get("cpu") != cpu:
        return {}
    measured = saved.get("measured", {})
    return {"cpu": cpu, "date": measured.get("sweeps", saved.get("date")),
            "sweeps": saved.get("sweeps"), "tuning": saved.get("tuning")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--accuracy-iterations", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite RESULTS.md from RESULTS.json, measuring nothing")  # fmt: skip
    parser.add_argument("--only", nargs="+", metavar="SECTION",
                        help="measure only these sections (throughput, time_to_accuracy, ...); "
                             "the others' results stay as RESULTS.json has them")  # fmt: skip
    args = parser.parse_args()
    saved = args.output.with_suffix(".json")
    if args.report_only:
        args.output.write_text(report(json.loads(saved.read_text())))
        return
    from pipeline.params import config

    batch_size = config.load_params(REPO / "params.yaml").train.batch_size  # the contenders' too
    results = json.loads(saved.read_text()) if args.only and saved.exists() else {}
    earlier_date = results.get("date", "an earlier run")
    earlier = earlier_throughput(results, machine()["cpu"])  # before this run replaces them
    results |= {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "batch_size": batch_size}
    scratch, env = scratch_repo("bench-repo-")  # reproduced by `pipeline`, served by `serving`
    sections = {
        "throughput": lambda: throughput(args.repeats, args.iterations, batch_size),
        "time_to_accuracy": lambda: time_to_accuracy(args.accuracy_iterations, args.seeds),
        "stage_cost": stage_cost.run,
        "pipeline": lambda: pipeline_timings(scratch, env, args.repeats),
        "inference": lambda: inference(200),
        "serving": lambda: serving_in_a_fresh_process(scratch, env),
        "overhead": lambda: overhead.run() | {"previous": earlier},
        "sweeps": sweep.run,
        "tuning": tuning.run,
    }
    measured = results.setdefault("measured", {})  # when each section was measured
    for name in set(results) & set(sections):  # the sections kept from an earlier run
        measured.setdefault(name, earlier_date)
    unknown = set(args.only or []) - set(sections)
    if unknown:
        raise SystemExit(f"error: no section {', '.join(sorted(unknown))}; sections: "
                         f"{', '.join(sections)}")  # fmt: skip
    try:
        for name, measure in sections.items():
            if args.only and name not in args.only:
                continue
            print(name.replace("_", " "), flush=True)  # noqa: T201
            results[name] = measure()
            results["measured"][name] = time.strftime("%Y-%m-%d %H:%M")
            saved.write_text(json.dumps(results, indent=2) + "\n")  # a failure later keeps these
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = report(results)
    args.output.write_text(text)
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
