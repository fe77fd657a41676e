"""Serving figures: the registered model in-process (pyfunc) and over HTTP (`make serve`).

In-process: p50/p99 of one image and images/s for batches of 1,000 through
`mlflow.pyfunc.load_model("models:/<name>@champion").predict`, and whether it printed anything.
Over HTTP: `python -m pipeline.serving.serve` started on a free port of 127.0.0.1; one image per
request, sequentially (p50/p99), then a load test from a second process: `--requests` requests
at `--concurrency` (threads, one kept-alive connection each), bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def percentiles(milliseconds: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(milliseconds, 50)),
            "p99_ms": float(np.percentile(milliseconds, 99))}  # fmt: skip


def in_process(images: np.ndarray, repeats: int, model_uri: str | None) -> dict:
    """pyfunc predict: one image (p50/p99) and batches of 1,000 (images/s); output captured."""
    import mlflow

    from pipeline.serving import models
    from pipeline.shared import config

    params = config.load_params(REPO / "params.yaml")
    model = models.load_pyfunc(model_uri or models.default_uri(params), params)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        single = [timed(model.predict, images[:1]) for _ in range(repeats + 20)][20:]
        bulk = [timed(model.predict, images[:1000]) for _ in range(12)][2:]
    return percentiles(single) | {
        "batch1000_images_per_s": 1000 / (float(np.median(bulk)) / 1000),
        "printed_chars": len(printed.getvalue()), "mlflow": mlflow.__version__,
    }  # fmt: skip


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return (time.perf_counter() - started) * 1000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server(port: int, model_uri: str | None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    model = ["--model", model_uri] if model_uri else []
    process = subprocess.Popen([sys.executable, "-m", "pipeline.serving.serve", "--port",
                                str(port), *model], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            time.sleep(0.3)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def post(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status, (time.perf_counter() - started) * 1000


def load(port: int, body: bytes, requests: int, concurrency: int, limit_s: float) -> dict:
    """`requests` POSTs from `concurrency` threads; stops early at `limit_s`."""
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
            except OSError:
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


def over_http(
    images: np.ndarray, repeats: int, requests: int, concurrency: int, model_uri: str | None
) -> dict:
    body = json.dumps({"inputs": images[:1].tolist()}).encode()
    port = free_port()
    with server(port, model_uri):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(20):
            post(connection, body)  # warm-up
        single = [post(connection, body)[1] for _ in range(repeats)]
        connection.close()
        loaded = load(port, body, requests, concurrency, limit_s=300)
    return {"one_image": percentiles(single), "load": loaded}


def run(
    repeats: int = 300, requests: int = 2000, concurrency: int = 8, model_uri: str | None = None
) -> dict:
    """Everything above; the model is the registered champion unless `model_uri` says."""
    from pipeline.shared import config
    from pipeline.shared.data import load_arrays

    params = config.load_params(REPO / "params.yaml")
    images = load_arrays(REPO / params.paths.split("test"))["x"][:1000]
    return {"in_process": in_process(images, repeats, model_uri),
            "http": over_http(images, repeats, requests, concurrency, model_uri)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model", help="an MLflow model URI (default: the champion)")
    args = parser.parse_args()
    results = run(requests=args.requests, concurrency=args.concurrency, model_uri=args.model)
    print(json.dumps(results))  # noqa: T201  (one line, the last: make bench reads it)


if __name__ == "__main__":
    main()
