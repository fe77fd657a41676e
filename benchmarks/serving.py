"""Serving the registered ONNX model as users do: `mlflow.pyfunc.load_model`, `make serve`, and
MLflow's scoring server on the same model; and what the prediction log costs `make serve`.

`measure()` runs `python -m benchmarks.serving` in a scratch copy `dvc repro` reproduced, so that
the champion is the model this code logs and nothing loaded before shares its thread pools. There:
in-process, cold start (process start to the first prediction), memory, one image p50/p99 and
batches of 1,000; then, for 1 and 2 workers, `make serve` and MLflow's server (mlflow_server.py)
up at once: start to the first answer (`make serve`'s copy of the model made afresh; again at a
restart), one image per request on one connection, load tests at each concurrency, memory, the
servers' turns alternating. Last, `make serve` with the prediction log on and off, the same way.
"""

import argparse
import concurrent.futures
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
import timeit
from pathlib import Path

import numpy as np
import psutil
import yaml

from benchmarks import markdown
from benchmarks.scratch import free_port, scratch_repo
from pipeline.inference import cache as model_cache
from pipeline.params import tools
from pipeline.runtime.processes import environment_without

REPO = Path(__file__).resolve().parents[1]
SERVERS = {"make serve": "pipeline.serving.serve",
           "MLflow's scoring server": "benchmarks.mlflow_server"}  # fmt: skip
BLOCKS = 6  # one-image requests go in this many blocks, the servers' order alternating


def percentiles(milliseconds: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(milliseconds, 50)),
            "p99_ms": float(np.percentile(milliseconds, 99))}  # fmt: skip


def in_process(params: tools.ToolParams, model_uri: str, images: np.ndarray, repeats: int) -> dict:
    """Load the model in this process, which nothing else ran in before; its first prediction
    (cold start: from the process's start), memory then, then steady-state timings."""
    import mlflow

    from pipeline.tracking import store as tracking

    tracking.connect(params.mlflow, REPO)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        model = mlflow.pyfunc.load_model(model_uri)
        model.predict(images[:1])
        cold_start_s = time.time() - psutil.Process().create_time()
        memory = {"rss_mib": psutil.Process().memory_info().rss / 2**20}
        single = timeit.repeat(lambda: model.predict(images[:1]), repeat=repeats + 20, number=1)
        bulk = timeit.repeat(lambda: model.predict(images), repeat=12, number=1)
    return percentiles([seconds * 1000 for seconds in single[20:]]) | {  # after a warm-up
        "cold_start_s": cold_start_s, "memory_at_first_prediction": memory,
        "batch1000_images_per_s": 1000 / float(np.median(bulk[2:])),
        "printed_chars": len(printed.getvalue()), "tensorflow_loaded": "tensorflow" in sys.modules,
    }  # fmt: skip


def post(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status, (time.perf_counter() - started) * 1000


@contextlib.contextmanager
def server(args: list[str], body: bytes, limit_s: float = 180):
    """`python -m <args> --port <a free port>`; yields (port, pid, seconds from spawn to the
    first 200 to POST /invocations) and stops it at the end."""
    port, started = free_port(), time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", *args, "--port", str(port)], cwd=REPO,
                               env=environment_without("MLFLOW_"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while time.perf_counter() - started < limit_s and process.poll() is None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                if post(connection, body)[0] == 200:
                    break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"{args[0]}: no answer (exit status {process.poll()})")
        yield port, process.pid, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=60)


def load(port: int, body: bytes, requests: int, concurrency: int, limit_s: float) -> dict:
    """`requests` POSTs from `concurrency` threads, one kept-alive connection each; those not
    sent by `limit_s` are left out."""
    deadline, local = time.monotonic() + limit_s, threading.local()

    def one(_: int) -> tuple[int, float] | None:
        if time.monotonic() > deadline:
            return None
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            return post(local.connection, body)
        except (OSError, http.client.HTTPException):
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            return 0, 0.0

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        answers = [answer for answer in pool.map(one, range(requests)) if answer]
    elapsed = time.perf_counter() - started
    return percentiles([ms for _, ms in answers]) | {
        "requests": len(answers), "errors": sum(status != 200 for status, _ in answers),
        "requests_per_s": len(answers) / elapsed, "concurrency": concurrency}  # fmt: skip


def server_memory(pid: int) -> dict[str, float]:
    """The largest resident memory among the server's processes (its workers, if any)."""
    server, sizes = psutil.Process(pid), []
    for process in [server, *server.children()]:
        with contextlib.suppress(psutil.NoSuchProcess):  # e.g. a resource tracker that ended
            sizes.append(process.memory_info().rss / 2**20)
    return {"rss_mib": max(sizes)}


def side_by_side(commands: dict[str, list[str]], body: bytes, repeats: int, requests: int,
                 concurrencies: list[int]) -> dict[str, dict]:  # fmt: skip
    """Every server up at once, started one after the other; their one-image requests in
    alternating blocks and their load tests alternating, so that drift hits all alike."""
    names = list(commands)
    with contextlib.ExitStack() as stack:
        up = {name: stack.enter_context(server(args, body)) for name, args in commands.items()}
        connections = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                       for name, (port, _, _) in up.items()}  # fmt: skip
        for connection in connections.values():
            for _ in range(20):
                post(connection, body)  # warm-up
        single: dict[str, list[float]] = {name: [] for name in names}
        for block in range(BLOCKS):
            for name in names[:: (-1) ** block]:  # the order alternates
                single[name] += [post(connections[name], body)[1]
                                 for _ in range(max(1, repeats // BLOCKS))]  # fmt: skip
        for connection in connections.values():
            connection.close()
        loads: dict[str, list[dict]] = {name: [] for name in names}
        for index, concurrency in enumerate(concurrencies):
            for name in names[:: (-1) ** index]:
                loads[name].append(load(up[name][0], body, requests, concurrency, 120))
        memory = {name: server_memory(up[name][1]) for name in names}
    return {name: {"cold_start_s": up[name][2], "one_image": percentiles(single[name]),
                   "load": loads[name], "memory": memory[name]} for name in names}  # fmt: skip


def over_http(model_uri: str, body: bytes, repeats: int, requests: int,
              concurrencies: list[int], workers: int) -> dict[str, dict]:  # fmt: skip
    """`make serve` and MLflow's server side by side, then each started again, alone, to its
    first answer."""
    commands = {name: [module, "--model", model_uri, "--workers", str(workers)]
                for name, module in SERVERS.items()}  # fmt: skip
    shutil.rmtree(REPO / model_cache.CACHE_DIR, ignore_errors=True)  # as after a new champion
    measured = side_by_side(commands, body, repeats, requests, concurrencies)
    for name, args in commands.items():
        with server(args, body) as (_, _, seconds):
            measured[name] |= {"workers": workers, "restart_s": seconds}
    return measured


def params_with_log(params: tools.ToolParams, folder: Path, on: bool) -> Path:
    """`params` with the prediction log on or off, the log in `folder`."""
    raw = params.model_dump(mode="json")
    raw["monitor"] |= {"log": on, "log_path": str(folder / "predictions.db")}
    path = folder / f"params-log-{'on' if on else 'off'}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def logging_cost(params: tools.ToolParams, model_uri: str, body: bytes, repeats: int,
                 requests: int) -> dict[str, dict]:  # fmt: skip
    """`make serve` with the prediction log on and off side by side, load tests at concurrency
    8 twice; the rows the log holds once the servers stopped."""
    with tempfile.TemporaryDirectory(prefix="bench-log-") as temporary:
        folder = Path(temporary)
        commands = {name: [SERVERS["make serve"], "--model", model_uri, "--workers", "1",
                           "--params", str(params_with_log(params, folder, name == "on"))]
                    for name in ("on", "off")}  # fmt: skip
        measured = side_by_side(commands, body, repeats, requests, [8, 8])
        with contextlib.closing(sqlite3.connect(folder / "predictions.db")) as database:
            logged = database.execute("SELECT count(*) FROM predictions").fetchone()[0]
    return {name: row | {"logged_rows": logged if name == "on" else 0}
            for name, row in measured.items()}  # fmt: skip


def run(repeats: int = 300, requests: int = 2000, concurrencies: tuple[int, ...] = (8, 64),
        workers: tuple[int, ...] = (1, 2)) -> dict:  # fmt: skip
    """Everything above, on this repo's champion."""
    from pipeline.data.files import load_arrays

    params = tools.load_params(REPO / "params.yaml")
    images = load_arrays(REPO / params.paths.split("test"))["x"][:1000]
    model_uri = f"models:/{params.mlflow.registered_model}@champion"
    first = in_process(params, model_uri, images, repeats)  # before anything else in here
    body = json.dumps({"inputs": images[:1].tolist()}).encode()
    http = [over_http(model_uri, body, repeats, requests, list(concurrencies), n) for n in workers]
    return {"model_uri": model_uri, "in_process": first,
            "http": {name: [measured[name] for measured in http] for name in SERVERS},
            "logging": logging_cost(params, model_uri, body, repeats, requests)}  # fmt: skip


def measure() -> dict:
    """`run()` in a fresh process, in a scratch copy `dvc repro` reproduced (untimed): this
    repo's champion is the best model ever trained here, maybe by older code."""
    with scratch_repo("bench-serving-") as (scratch, env):
        subprocess.run(["dvc", "repro", "-q"], cwd=scratch, env=env, check=True)
        result = subprocess.run([sys.executable, "-m", "benchmarks.serving"], cwd=scratch,
                                env=env, capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:  # its own words, not only the exit status
        raise RuntimeError(f"benchmarks.serving failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(serving: dict) -> list[str]:
    """In-process, both servers, MLflow's against `make serve`, then the prediction log."""
    row = serving["in_process"]
    in_process = markdown.table(
        ["cold start to first prediction s", "memory then MiB", "one image p50 ms", "p99 ms",
         "batch 1000 images/s", "printed", "TensorFlow loaded"],
        [[f"{row['cold_start_s']:.2f}", f"{row['memory_at_first_prediction']['rss_mib']:.0f}",
          f"{row['p50_ms']:.3f}", f"{row['p99_ms']:.3f}", f"{row['batch1000_images_per_s']:,.0f}",
          f"{row['printed_chars']} chars", row["tensorflow_loaded"]]])  # fmt: skip
    http = serving["http"]
    rows = [server_row(name, rows[index]) for index in range(len(http["make serve"]))
            for name, rows in http.items()]  # fmt: skip
    ours, mlflow = http["make serve"][0], http["MLflow's scoring server"][0]
    ratio = {key: mlflow[key] / ours[key] for key in ("cold_start_s", "restart_s")}
    return ["## Serving the registered ONNX model", "", "In-process: `mlflow.pyfunc.load_model"
            f"(\"{serving['model_uri']}\")` in a fresh process.", "", *in_process, "",
            "Servers (POST /invocations, one image per request): process start to the first "
            "answer, first with no answer kept for `@champion` (MLflow resolves it in a child "
            "process, as after the alias moved outside the pipeline) and then at a restart with "
            "the store unchanged (as also after `make repro`, whose evaluate stage leaves the "
            "answer); one connection; then load tests from a second process; memory is the "
            "largest resident set among the server's processes after the load tests.", "",
            *markdown.table(["server", "workers", "start to first answer s", "restart s",
                             "server RSS MiB", "one image p50 ms", "p99 ms", "load: concurrency, "
                             "errors, p50 ms, p99 ms, requests/s"], rows), "",
            "MLflow's scoring server / `make serve`, one worker: start to first answer "
            f"**{ratio['cold_start_s']:.2f}×** (restart **{ratio['restart_s']:.2f}×**), memory "
            f"**{mlflow['memory']['rss_mib'] / ours['memory']['rss_mib']:.2f}×**, one image "
            f"p50 **{mlflow['one_image']['p50_ms'] / ours['one_image']['p50_ms']:.2f}×**.",
            *logging_table(serving["logging"])]  # fmt: skip


def loads(row: dict, p99: bool = True) -> str:
    """A server's load tests: concurrency, errors, p50 ms, p99 ms, requests/s each."""
    return "; ".join(f"{run['concurrency']}: {run['errors']}, {run['p50_ms']:.1f}, "
                     + (f"{run['p99_ms']:.1f}, " if p99 else "")
                     + f"{run['requests_per_s']:,.0f}" for run in row["load"])  # fmt: skip


def server_row(name: str, row: dict) -> list[object]:
    return [name, row["workers"], f"{row['cold_start_s']:.2f}", f"{row['restart_s']:.2f}",
            f"{row['memory']['rss_mib']:.0f}", f"{row['one_image']['p50_ms']:.2f}",
            f"{row['one_image']['p99_ms']:.2f}", loads(row)]  # fmt: skip


def logging_table(logging: dict) -> list[str]:
    """`make serve` with the prediction log on and off."""
    rows = [[name, f"{row['one_image']['p50_ms']:.2f}", f"{row['one_image']['p99_ms']:.2f}",
             loads(row, p99=False), f"{row['logged_rows']:,}"]
            for name, row in logging.items()]  # fmt: skip
    rate = {name: np.median([run["requests_per_s"] for run in row["load"]])
            for name, row in logging.items()}  # fmt: skip
    p50 = {name: row["one_image"]["p50_ms"] for name, row in logging.items()}
    return ["", "The prediction log's cost: `make serve` with `monitor.log` on and off, both up "
            "at once; one image per request on one connection (alternating blocks), then load "
            "tests, alternating.", "", *markdown.table(["prediction log", "one image p50 ms",
            "p99 ms", "load: concurrency, errors, p50 ms, requests/s", "rows logged"], rows), "",
            f"Log on / off: one image p50 **{p50['on'] / p50['off']:.2f}×**, "
            f"requests/s under load **{rate['on'] / rate['off']:.2f}×**."]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    results = run(repeats=args.repeats, requests=args.requests)
    print(json.dumps(results))  # noqa: T201  (one line, the last: measure() reads it)


if __name__ == "__main__":
    main()
