"""Serving figures: the registered ONNX model against the previous TensorFlow pyfunc, one run.

Run in a scratch copy that `dvc repro` reproduced (benchmarks/bench.py does), so the champion
is the model this code logs. The previous registered model, the TensorFlow pyfunc with its
fused forward pass (benchmarks/tf_pyfunc.py), is logged beside it into the same scratch store
from the same trained `.keras` file, so both serve the same weights.

For each model, interleaved, each in a fresh process:
- in-process: cold start (process start to its first prediction) and resident memory, then
  one image p50/p99 and batches of 1,000 (images/s) through `mlflow.pyfunc.load_model`;
- over HTTP, on free ports of 127.0.0.1, all servers up at once: `make serve`'s server on the
  ONNX model; MLflow's own scoring server (benchmarks/mlflow_server.py, how `make serve` ran
  before) on the same model; and MLflow's server on the TensorFlow pyfunc. Start to the first
  answered POST /invocations (for `make serve` with its copy of the model made afresh, so
  MLflow resolves the alias, then again at a restart with the store unchanged), one image per
  request on one connection (p50/p99, in alternating blocks), then load tests from this process
  at each concurrency and number of server workers, bounded in count and time, alternating,
  and each server's resident memory.
- the cost of the prediction log: `make serve` on the ONNX model twice, up at once, with the
  log on (the default) and off (`monitor.log: false`): one image per request on one
  connection (p50/p99, alternating blocks), then load tests, alternating.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

from pipeline.inference import cache as model_cache
from pipeline.runtime.processes import environment_without
from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]
TENSORFLOW_PYFUNC = REPO / "benchmarks" / "tf_pyfunc.py"
MODELS = ("onnx", "tensorflow")  # the registered model now, and the one before
SERVERS = {  # over HTTP: which server, on which of MODELS
    "onnx": ("pipeline.serving.serve", "onnx"),
    "onnx_mlflow": ("benchmarks.mlflow_server", "onnx"),
    "tensorflow": ("benchmarks.mlflow_server", "tensorflow"),
}


def percentiles(milliseconds: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(milliseconds, 50)),
            "p99_ms": float(np.percentile(milliseconds, 99))}  # fmt: skip


def memory_mib(process: psutil.Process | None = None) -> dict[str, float]:
    """A process's resident memory now (this process unless told)."""
    return {"rss_mib": (process or psutil.Process()).memory_info().rss / 2**20}


def test_images() -> np.ndarray:
    from pipeline.data.files import load_arrays
    from pipeline.params import tools

    params = tools.load_params(REPO / "params.yaml")
    return load_arrays(REPO / params.paths.split("test"))["x"][:1000]


def connect() -> None:
    from pipeline.params import tools
    from pipeline.tracking import store as tracking

    tracking.connect(tools.load_params(REPO / "params.yaml").mlflow, REPO)


def log_tensorflow_pyfunc() -> str:
    """The previous registered model over this scratch repo's .keras file; its model URI."""
    import mlflow

    from pipeline.params import tools
    from pipeline.tracking import store as tracking

    params = tools.load_params(REPO / "params.yaml")
    experiment_id = tracking.use_store(params.mlflow, REPO)
    with mlflow.start_run(experiment_id=experiment_id, run_name="bench-tensorflow-pyfunc"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(TENSORFLOW_PYFUNC),
            artifacts={"keras_model": str(REPO / params.paths.model)},
            pip_requirements=["tensorflow", "keras", f"mlflow=={mlflow.__version__}"],
        )  # fmt: skip
    return info.model_uri


def in_process(model_uri: str, repeats: int) -> dict:
    """In this (fresh) process: load, first prediction, then steady-state timings."""
    import mlflow

    connect()
    images = test_images()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        model = mlflow.pyfunc.load_model(model_uri)
        model.predict(images[:1])
        first = time.time()
        memory = memory_mib()
        single = [timed(model.predict, images[:1]) for _ in range(repeats + 20)][20:]
        bulk = [timed(model.predict, images) for _ in range(12)][2:]
    return percentiles(single) | {
        "first_prediction_at": first, "memory_at_first_prediction": memory,
        "batch1000_images_per_s": 1000 / (float(np.median(bulk)) / 1000),
        "printed_chars": len(printed.getvalue()), "tensorflow_loaded": "tensorflow" in sys.modules,
    }  # fmt: skip


def in_fresh_process(model_uri: str, repeats: int) -> dict:
    """`in_process` in a new interpreter; cold start counts from just before it is spawned."""
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "benchmarks.serving", "--in-process",
                             model_uri, "--repeats", str(repeats)], cwd=REPO,
                            capture_output=True, text=True, check=True)  # fmt: skip
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return measured | {"cold_start_s": measured.pop("first_prediction_at") - started}


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return (time.perf_counter() - started) * 1000


def post(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status, (time.perf_counter() - started) * 1000


def first_answer(port: int, body: bytes, process: subprocess.Popen, limit_s: float) -> None:
    """Return once POST /invocations answers 200; fail if the server exits or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            if post(connection, body)[0] == 200:
                return
        time.sleep(0.02)
    raise TimeoutError(f"no answer within {limit_s} s")


@contextlib.contextmanager
def server(module: str, model_uri: str, workers: int, body: bytes, *args: str):
    """`module`'s server on a free port; yields (port, pid, seconds from spawn to first answer)."""
    env = environment_without("MLFLOW_")
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", module, "--port",
                                str(port), "--model", model_uri, "--workers", str(workers), *args],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        first_answer(port, body, process, limit_s=180)
        yield port, process.pid, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=60)


def load(port: int, body: bytes, requests: int, concurrency: int, limit_s: float) -> dict:
    """`requests` POSTs from `concurrency` threads, one kept-alive connection each; stops early
    at `limit_s`."""
    latencies: list[float] = []
    errors = [0]
    lock, remaining = threading.Lock(), [requests]
    deadline = time.monotonic() + limit_s

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                if remaining[0] == 0:
                    break
                remaining[0] -= 1
            try:
                status, milliseconds = post(connection, body)
            except (OSError, http.client.HTTPException):
                status, milliseconds = 0, 0.0
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                latencies.append(milliseconds)
                errors[0] += status != 200
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return percentiles(latencies) | {"requests": len(latencies), "errors": errors[0],
                                     "requests_per_s": len(latencies) / elapsed,
                                     "concurrency": concurrency}  # fmt: skip


def server_memory(pid: int) -> dict[str, float]:
    """The largest resident memory among the server's processes (its workers, if any)."""
    server = psutil.Process(pid)
    measured = []
    for process in [server, *server.children()]:
        with contextlib.suppress(psutil.NoSuchProcess):  # e.g. a resource tracker that ended
            measured.append(memory_mib(process))
    return {"rss_mib": max(row["rss_mib"] for row in measured)}


def over_http(uris: dict[str, str], images: np.ndarray, repeats: int, requests: int,
              concurrencies: list[int], workers: int) -> dict[str, dict]:  # fmt: skip
    """Every server up at once, started one after the other; their one-image requests in
    alternating blocks and their load tests alternating, so drift hits all alike; then each
    started again, alone, to its first answer."""
    body = json.dumps({"inputs": images[:1].tolist()}).encode()
    shutil.rmtree(REPO / model_cache.CACHE_DIR, ignore_errors=True)  # as after a new champion
    with contextlib.ExitStack() as stack:
        started = {name: stack.enter_context(server(module, uris[model], workers, body))
                   for name, (module, model) in SERVERS.items()}  # fmt: skip
        connections = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                       for name, (port, _, _) in started.items()}  # fmt: skip
        single: dict[str, list[float]] = {name: [] for name in SERVERS}
        for connection in connections.values():
            for _ in range(20):
                post(connection, body)  # warm-up
        blocks = 6
        for block in range(blocks):
            for name in list(SERVERS) if block % 2 == 0 else list(SERVERS)[::-1]:
                single[name] += [post(connections[name], body)[1]
                                 for _ in range(repeats // blocks)]  # fmt: skip
        for connection in connections.values():
            connection.close()
        loads: dict[str, list[dict]] = {name: [] for name in SERVERS}
        for concurrency in concurrencies:
            for name in SERVERS:
                loads[name].append(load(started[name][0], body, requests, concurrency, 120))
        memory = {name: server_memory(started[name][1]) for name in SERVERS}
    restarted = {}
    for name, (module, model) in SERVERS.items():
        with server(module, uris[model], workers, body) as (_, _, seconds):
            restarted[name] = seconds
    return {name: {"workers": workers, "cold_start_s": started[name][2],
                   "restart_s": restarted[name], "one_image": percentiles(single[name]),
                   "load": loads[name], "memory": memory[name]} for name in SERVERS}  # fmt: skip


def params_with_log(folder: Path, on: bool) -> Path:
    """This repo's params with the prediction log on or off, the log in `folder`."""
    from pipeline.params import tools

    raw = tools.load_params(REPO / "params.yaml").model_dump(mode="json")
    raw["monitor"] |= {"log": on, "log_path": str(folder / "predictions.db")}
    path = folder / f"params-log-{'on' if on else 'off'}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def logging_cost(model_uri: str, images: np.ndarray, repeats: int, requests: int,
                 concurrency: int = 8, rounds: int = 2) -> dict[str, dict]:  # fmt: skip
    """`make serve` with the prediction log on and off, both up at once on the same model: one
    image per request on one connection in alternating blocks, then `rounds` load tests each at
    `concurrency`, alternating; the rows the log holds at the end."""
    body = json.dumps({"inputs": images[:1].tolist()}).encode()
    folder = Path(tempfile.mkdtemp(prefix="bench-log-"))
    try:
        files = {name: params_with_log(folder, name == "on") for name in ("on", "off")}
        with contextlib.ExitStack() as stack:
            ports = {name: stack.enter_context(server("pipeline.serving.serve", model_uri, 1, body,
                                                      "--params", str(path)))[0]
                     for name, path in files.items()}  # fmt: skip
            connections = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                           for name, port in ports.items()}  # fmt: skip
            for connection in connections.values():
                for _ in range(20):
                    post(connection, body)  # warm-up
            single: dict[str, list[float]] = {name: [] for name in files}
            blocks = 6
            for block in range(blocks):
                for name in list(files) if block % 2 == 0 else list(files)[::-1]:
                    single[name] += [post(connections[name], body)[1]
                                     for _ in range(max(1, repeats // blocks))]  # fmt: skip
            for connection in connections.values():
                connection.close()
            loads: dict[str, list[dict]] = {name: [] for name in files}
            for round_ in range(rounds):
                for name in list(files) if round_ % 2 == 0 else list(files)[::-1]:
                    loads[name].append(load(ports[name], body, requests, concurrency, 120))
        logged = logged_rows(folder / "predictions.db")  # the servers stopped: all written
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {name: {"one_image": percentiles(single[name]), "load": loads[name],
                   "logged_rows": logged if name == "on" else 0} for name in files}  # fmt: skip


def logged_rows(database: Path) -> int:
    if not database.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT count(*) FROM predictions").fetchone()[0]


def run(repeats: int = 300, requests: int = 2000, concurrencies: tuple[int, ...] = (8, 64),
        workers: tuple[int, ...] = (1, 2)) -> dict:  # fmt: skip
    """Everything above, for both models, interleaved."""
    from pipeline.params import tools

    params = tools.load_params(REPO / "params.yaml")
    uris = {"onnx": f"models:/{params.mlflow.registered_model}@champion",
            "tensorflow": log_tensorflow_pyfunc()}  # fmt: skip
    images = test_images()
    results: dict = {name: {"model_uri": uris[model], "http": []}
                     for name, (_, model) in SERVERS.items()}  # fmt: skip
    for name in MODELS:
        results[name]["in_process"] = in_fresh_process(uris[name], repeats)
    for count in workers:
        measured = over_http(uris, images, repeats, requests, list(concurrencies), count)
        for name in SERVERS:
            results[name]["http"].append(measured[name])
    results["logging"] = logging_cost(uris["onnx"], images, repeats, requests)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--in-process", metavar="MODEL_URI",
                        help="only this model's in-process figures, here")  # fmt: skip
    parser.add_argument("--logging", metavar="MODEL_URI",
                        help="only the prediction log's cost, on this model")  # fmt: skip
    args = parser.parse_args()
    if args.logging:
        results = logging_cost(args.logging, test_images(), args.repeats, args.requests)
    elif args.in_process:
        results = in_process(args.in_process, args.repeats)
    else:
        results = run(repeats=args.repeats, requests=args.requests)
    print(json.dumps(results))  # noqa: T201  (one line, the last: make bench reads it)


if __name__ == "__main__":
    main()
