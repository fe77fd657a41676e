"""Serving the registered ONNX model: in-process, then over HTTP under wrk, `make serve` against
MLflow's scoring server on the same model (and, with SERVING_BASE=<rev>, `make serve` as that
revision had it), then `make serve` offered 4× the requests it admits."""

import argparse
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import psutil

from benchmarks import markdown
from benchmarks.scratch import free_port, git, scratch_repo
from pipeline.params import tools
from pipeline.runtime.processes import environment_without

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY, SECONDS = (1, 8, 64), 4
MLFLOW = "MLflow's scoring server"
SERVERS = {"make serve": "pipeline.serving.serve", MLFLOW: "benchmarks.mlflow_server"}
BEFORE = "make serve before"  # the SERVING_BASE revision's
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = io.open("{body}", "rb"):read("*all")
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{{"requests": %d, "non_2xx": %d, "failed": %d, "seconds": %f, '
    .. '"p50_ms": %f, "p99_ms": %f}}\\n', summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


def in_process(params: tools.ToolParams, model_uri: str, images: np.ndarray) -> dict:
    """Load the model in this fresh process: its first prediction, memory, one image, 1,000."""
    import mlflow

    from pipeline.tracking import store as tracking

    tracking.connect(params.mlflow, REPO)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model = mlflow.pyfunc.load_model(model_uri)
        model.predict(images[:1])
    cold_start_s = time.time() - psutil.Process().create_time()
    rss_mib = psutil.Process().memory_info().rss / 2**20
    single = timeit.repeat(lambda: model.predict(images[:1]), repeat=320, number=1)[20:]
    bulk = timeit.repeat(lambda: model.predict(images), repeat=12, number=1)[2:]
    return {"cold_start_s": cold_start_s, "rss_mib": rss_mib,
            "p50_ms": 1000 * float(np.median(single)), "p99_ms": 1000 * np.percentile(single, 99),
            "batch1000_images_per_s": 1000 / float(np.median(bulk)),
            "tensorflow_loaded": "tensorflow" in sys.modules}  # fmt: skip


@contextlib.contextmanager
def server(command: list[str], body: bytes, cwd: Path = REPO, env: dict | None = None):
    """`python -m <command> --port P` in `cwd`; yields (port, pid, seconds to its first 200)."""
    port, started = free_port(), time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", *command, "--port", str(port)], cwd=cwd,
                               env=environment_without("MLFLOW_") | (env or {}),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while process.poll() is None and time.perf_counter() - started < 180:
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("POST", "/invocations", body,
                                   {"Content-Type": "application/json"})  # fmt: skip
                if connection.getresponse().status == 200:
                    break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"{command[0]}: no answer (exit status {process.poll()})")
        yield port, process.pid, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=60)


def wrk(port: int, path: str, body: Path, headers: dict, connections: int) -> dict:
    """wrk's one-thread load of POST `path` for SECONDS: requests/s, p50 and p99 ms, non-2xx."""
    lines = "\n".join(f'wrk.headers["{key}"] = "{value}"' for key, value in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT.format(body=body, headers=lines))
        script.flush()
        output = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{SECONDS}s", "--timeout", "10s", "-s",
             script.name, f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    result = json.loads(output.strip().splitlines()[-1])
    return result | {"requests_per_s": result["requests"] / result["seconds"],
                     "concurrency": connections}  # fmt: skip


def bodies(images: np.ndarray, folder: Path) -> dict[str, tuple[str, Path, dict]]:
    """One image as each protocol takes it: (path, body file, headers)."""
    image = images[:1].astype("<f4")
    tensor = {"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
              "parameters": {"binary_data_size": image.nbytes}}  # fmt: skip
    header = json.dumps({"inputs": [tensor], "outputs": [
        {"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    (folder / "image.json").write_text(json.dumps({"inputs": image.tolist()}))
    (folder / "image.bin").write_bytes(header + image.tobytes())
    return {"JSON": ("/invocations", folder / "image.json", {"Content-Type": "application/json"}),
            "binary": ("/v2/models/mnist-lstm/infer", folder / "image.bin",
                       {"Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(len(header))})}  # fmt: skip


@contextlib.contextmanager
def base_checkout(revision: str):
    """The revision's files, and a folder where `httptools` and `uvloop` fail to import."""
    with tempfile.TemporaryDirectory(prefix="bench-base-") as folder:
        with tarfile.open(fileobj=io.BytesIO(git("archive", revision, text=False))) as files:
            files.extractall(Path(folder) / "code", filter="data")
        for name in ("httptools", "uvloop"):
            (Path(folder) / "absent" / name).mkdir(parents=True)
            (Path(folder) / "absent" / name / "__init__.py").write_text("raise ImportError\n")
        yield folder


def over_http(model: str, workers: int, base, folder: Path, images: np.ndarray) -> dict:
    """Every server up at once with `workers` processes; their load tests, turns alternating."""
    kinds = bodies(images, folder)
    json_body = kinds["JSON"][1].read_bytes()
    args = ["--model", model, "--workers", str(workers)]
    with contextlib.ExitStack() as stack:
        up = {name: stack.enter_context(server([module, *args], json_body))
              for name, module in SERVERS.items()}  # fmt: skip
        if base:
            up[BEFORE] = stack.enter_context(server([SERVERS["make serve"], *args], json_body,
                                                    *base))  # fmt: skip
        runs = [(name, kind) for name in up for kind in kinds
                if kind == "JSON" or name == "make serve"]  # fmt: skip
        loads: dict = {f"{name}, {kind}": [] for name, kind in runs}
        for index, concurrency in enumerate(CONCURRENCY):
            for name, kind in runs[:: (-1) ** index]:  # the order alternates
                path, body, headers = kinds[kind]
                loads[f"{name}, {kind}"].append(wrk(up[name][0], path, body, headers, concurrency))
        memory = {name: max(p.memory_info().rss for p in [psutil.Process(pid), *psutil.Process(
            pid).children()]) / 2**20 for name, (_, pid, _) in up.items()}  # fmt: skip
    return {row: {"workers": workers, "start_s": up[row.split(", ")[0]][2], "load": runs_of,
                  "rss_mib": memory[row.split(", ")[0]]}
            for row, runs_of in loads.items()}  # fmt: skip


def overload(model: str, params: tools.ToolParams, folder: Path, images: np.ndarray) -> dict:
    """`make serve` flooded with 4× the connections it admits; one more client times its own."""
    path, body, headers = bodies(images, folder)["JSON"]
    connections, data = 4 * params.serve.max_pending, body.read_bytes()
    with server([SERVERS["make serve"], "--model", model, "--workers", "1"], data) as (port, _, _):
        capacity = wrk(port, path, body, headers, 64)
        with concurrent.futures.ThreadPoolExecutor(1) as flood:
            flooded = flood.submit(wrk, port, path, body, headers, connections)
            time.sleep(0.5)  # the flood is on
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            deadline, answers = time.monotonic() + SECONDS - 1, []
            while time.monotonic() < deadline:
                started = time.perf_counter()
                probe.request("POST", path, data, headers)
                response = probe.getresponse()
                response.read()
                answers.append((response.status, 1000 * (time.perf_counter() - started)))
        admitted = [ms for status, ms in answers if status == 200] or [float("nan")]
    return {"capacity": capacity, "flood": flooded.result(), "probe_requests": len(answers),
            "probe_shed": sum(status == 503 for status, _ in answers),
            "admitted_p50_ms": float(np.percentile(admitted, 50)),
            "admitted_p99_ms": float(np.percentile(admitted, 99))}  # fmt: skip


def run() -> dict:
    """Everything above, on this repo's champion (one local copy, the same for every server)."""
    from pipeline.data.files import load_arrays
    from pipeline.serving import loader

    params = tools.load_params(REPO / "params.yaml")
    images = load_arrays(REPO / params.paths.split("test"))["x"][:1000]
    model_uri = f"models:/{params.mlflow.registered_model}@champion"
    first = in_process(params, model_uri, images)  # before anything else in this process
    model = loader.locate(model_uri, params).path
    base_dir = os.environ.get("SERVING_BASE_DIR")  # the base revision's `make serve`, its env
    env = {"PYTHONPATH": f"{base_dir}/absent", "DVC_ROOT": str(REPO)}
    base = (Path(f"{base_dir}/code"), env) if base_dir else None
    with tempfile.TemporaryDirectory() as folder:
        http = {}
        for workers in (1, 2):
            http |= {f"{row}, {workers}": measured for row, measured in
                     over_http(model, workers, base, Path(folder), images).items()}  # fmt: skip
        shed = overload(model, params, Path(folder), images)
    return {"model_uri": model_uri, "base": os.environ.get("SERVING_BASE"), "in_process": first,
            "http": http, "overload": shed, "max_pending": params.serve.max_pending}  # fmt: skip


def measure() -> dict:
    """`run()` in a fresh process, in a scratch copy `dvc repro` reproduced (untimed)."""
    revision = os.environ.get("SERVING_BASE", "")
    with scratch_repo("bench-serving-") as (scratch, env), contextlib.ExitStack() as stack:
        if revision:
            env |= {"SERVING_BASE_DIR": stack.enter_context(base_checkout(revision))}
        subprocess.run(["dvc", "repro", "-q"], cwd=scratch, env=env, check=True)
        result = subprocess.run([sys.executable, "-m", "benchmarks.serving"], cwd=scratch,
                                env=env | {"SERVING_BASE": revision},
                                capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:  # its own words, not only the exit status
        raise RuntimeError(f"benchmarks.serving failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(serving: dict) -> list[str]:
    """In-process, then every server's load tests, the ratios, the overload."""
    first, http = serving["in_process"], serving["http"]
    rows = [[row.rsplit(", ", 1)[0], row.rsplit(", ", 1)[1], f"{r['start_s']:.2f}",
             f"{r['rss_mib']:.0f}", *(f"{run['requests_per_s']:,.0f} ({run['p50_ms']:.1f}, "
             f"{run['p99_ms']:.1f})" for run in r["load"])] for row, r in http.items()]  # fmt: skip

    def rate(row: str, concurrency: int = 8) -> float:
        runs = http[f"{row}, 1"]["load"]
        return next(r["requests_per_s"] for r in runs if r["concurrency"] == concurrency)

    ours = rate("make serve, JSON")
    ratios = [f"MLflow's scoring server **{ours / rate(MLFLOW + ', JSON'):.2f}×**"]
    if f"{BEFORE}, JSON, 1" in http:
        before = rate(f"{BEFORE}, JSON")
        ratios += [
            f"`make serve` at {serving['base']} **{ours / before:.2f}×** (binary bodies "
            f"**{rate('make serve, binary') / before:.2f}×**)"
        ]
    load = serving["overload"]
    flood, capacity = load["flood"], load["capacity"]
    return ["## Serving the registered ONNX model", "",
            f"In-process, `mlflow.pyfunc.load_model(\"{serving['model_uri']}\")` in a fresh "
            f"process: first prediction {first['cold_start_s']:.2f} s after its start, "
            f"{first['rss_mib']:.0f} MiB; one image p50 {first['p50_ms']:.3f} ms, p99 "
            f"{first['p99_ms']:.3f} ms; batches of 1,000: {first['batch1000_images_per_s']:,.0f}"
            f" images/s; TensorFlow loaded: {first['tensorflow_loaded']}.", "",
            "Over HTTP, one image per request, wrk with keep-alive connections; each cell is "
            "requests/s (p50 ms, p99 ms); the prediction log on.", "",
            *markdown.table(["server, body", "workers", "start to first answer s", "RSS MiB",
                             *(f"concurrency {c}" for c in CONCURRENCY)], rows), "",
            "`make serve` (JSON, 1 worker, 8 connections) in requests/s against "
            + "; ".join(ratios) + ".", "",
            f"Overloaded: wrk's {flood['concurrency']} connections (4× the "
            f"{serving['max_pending']} requests a process admits) got "
            f"{flood['non_2xx'] / flood['requests']:.0%} 503s ({flood['requests_per_s']:,.0f} "
            f"answers/s; at 64 connections {capacity['requests_per_s']:,.0f}/s, p99 "
            f"{capacity['p99_ms']:.1f} ms); meanwhile one more client's admitted requests: p50 "
            f"{load['admitted_p50_ms']:.1f} ms, p99 {load['admitted_p99_ms']:.1f} ms "
            f"({load['probe_shed']} of its {load['probe_requests']} refused)."]  # fmt: skip


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(json.dumps(run()))  # noqa: T201  (one line, the last: measure() reads it)


if __name__ == "__main__":
    main()
