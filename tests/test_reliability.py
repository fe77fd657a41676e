"""Faults: misbehaving download servers, an unreachable tracking server, interrupted training."""

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline import fetch
from pipeline.params import config
from pipeline.runtime.processes import environment_without

from .support import REPO

HOLD_S = 120  # how long the server holds a connection it never finishes: guards against hangs


@dataclass(frozen=True)
class Misbehaving:
    url: str
    client_gave_up: threading.Event  # the client closed a connection the server was still holding


@contextmanager
def misbehaving_server(mode: str) -> Iterator[Misbehaving]:
    """A one-connection-at-a-time HTTP server on 127.0.0.1 that fails in the way `mode` says."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop, gave_up = threading.Event(), threading.Event()
    body = b"not the mnist you are looking for" * 100

    def hold(connection: socket.socket) -> None:
        """Neither answer nor close until the client hangs up (or the test ends, or HOLD_S)."""
        connection.settimeout(0.2)
        deadline = time.monotonic() + HOLD_S
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if connection.recv(1) == b"":
                    gave_up.set()
                    return
            except TimeoutError:
                continue
            except ConnectionResetError:
                gave_up.set()
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)  # the request
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                if mode == "silent":  # accepts, then never answers
                    hold(connection)
                elif mode == "stall":  # headers and a little of the body, then nothing
                    connection.sendall(head + body[:100])
                    hold(connection)
                elif mode == "truncated":  # promises more than it sends, then closes
                    connection.sendall(head + body[: len(body) // 2])
                elif mode == "wrong":  # a complete body that is not the expected file
                    connection.sendall(head + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Misbehaving(f"http://127.0.0.1:{listener.getsockname()[1]}", gave_up)
    finally:
        stop.set()
        thread.join(timeout=15)
        listener.close()


@pytest.mark.parametrize("mode", ["silent", "stall", "truncated", "wrong"])
def test_bad_download_leaves_nothing_and_falls_through_to_the_next_source(
    raw_params, mirror, tmp_path, mode
):
    with misbehaving_server(mode) as server:
        url = {"kind": "url", "url": f"{server.url}/mnist.npz", "sha256": "0" * 64}
        raw_params["data"] |= {"download_timeout": 1, "sources": [url]}
        with pytest.raises(fetch.FetchError, match=f"url {server.url}/mnist.npz: "):
            fetch.run(config.parse_params(raw_params))
        raw_dir = tmp_path / "data/raw"
        assert not raw_dir.exists() or not any(raw_dir.iterdir())
        raw_params["data"]["sources"] = [url, {"kind": "local", "path": str(mirror)}]
        result = fetch.run(config.parse_params(raw_params))
        # behavioural: a server that never finishes is left by the client's own timeout, not
        # waited out (the wait is for the server's thread to see the hang-up)
        assert mode not in ("silent", "stall") or server.client_gave_up.wait(10)
    assert result.source == f"local {mirror}"


def stage(name: str, params_file: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    environment = environment_without("MLFLOW_")
    return subprocess.Popen(
        [sys.executable, "-m", f"pipeline.{name}", "--params", str(params_file)],
        cwd=REPO, env=environment | (env or {}), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen,
    )  # fmt: skip


@pytest.mark.slow
def test_unanswering_tracking_server_fails_fast_before_training(prepared, tmp_path):
    with misbehaving_server("silent") as server:
        url = server.url
        process = stage("train", prepared, {"MLFLOW_TRACKING_URI": url, "DVC_ROOT": str(tmp_path)})
        try:
            # a generous deadline, under HOLD_S: it guards against a hang only
            _, stderr = process.communicate(timeout=90)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert server.client_gave_up.wait(10)  # behavioural: the stage hung up, not the server
    assert process.returncode != 0
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: MLflow tracking server {url} did not answer")
    assert "Traceback" not in stderr
    assert "iteration" not in stderr and not (tmp_path / "models/model.keras").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_is_killed_cleanly(prepared, raw_params, tmp_path, signum):
    raw_params["train"] |= {"iterations": 999_999, "log_every": 21}
    prepared.write_text(yaml.safe_dump(raw_params))
    process = stage("train", prepared, {"DVC_ROOT": str(tmp_path)})
    try:
        for line in process.stderr:  # wait until training is under way
            if "iteration 21/" in line:
                break
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # never leave a 999,999-iteration training behind
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert "error: interrupted" in stderr and "Traceback" not in stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-lstm").experiment_id])
    assert run.info.status == "KILLED"
    models = tmp_path / "models"
    assert not models.exists() or list(models.iterdir()) == []  # no model, no temp file


TRAIN_TWICE = """
import hashlib, pathlib, sys, tempfile
import numpy as np
from pipeline.params import config
from pipeline.training import fitting, onnx_export, tf_runtime
from pipeline.training.network import build_model
params = config.load_params(sys.argv[1])
tf_runtime.configure_runtime(params.seed, params.train)  # seeds, op determinism, as train
rng = np.random.default_rng(0)
x, y = rng.random((96, 28, 28), dtype=np.float32), rng.integers(0, 10, 96).astype(np.uint8)
net = build_model(params.model)
rows = []
fitting.fit(fitting.compile_trainer(net, params.train), {"x": x, "y": y},
            {"x": x[:20], "y": y[:20]}, params.train, params.seed, rows.append)
# The ONNX file's bytes may differ between exports (tf2onnx keeps one of several equal
# constants in no fixed order); what it computes may not.
exported = pathlib.Path(tempfile.mkdtemp()) / "model.onnx"
onnx_export.write_onnx(net, exported)
import onnxruntime
session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
scored = session.run(None, {"images": x})[0]
print(hashlib.sha256(b"".join(w.tobytes() for w in net.get_weights())).hexdigest(), rows,
      hashlib.sha256(scored.tobytes()).hexdigest())
import tensorflow as tf
sys.stderr.write(f"inter-op threads {tf.config.threading.get_inter_op_parallelism_threads()}")
"""


def train_in_a_fresh_process(params_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRAIN_TWICE, str(params_file)], cwd=REPO,
                          capture_output=True, text=True, check=True)  # fmt: skip


@pytest.mark.slow
def test_same_params_and_seed_give_bit_identical_weights_and_history(prepared, tmp_path):
    """Two fresh processes, the second beside another training: bit-identical weights and ONNX."""
    first = train_in_a_fresh_process(prepared)
    beside = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "-m",
                               "pipeline.train"])  # fmt: skip
    try:
        second = train_in_a_fresh_process(prepared)
    finally:
        beside.kill()
        beside.wait()
    assert second.stderr.endswith("inter-op threads 1"), second.stderr[-300:]
    assert first.stdout == second.stdout and len(first.stdout.split()[0]) == 64


def test_the_makefile_binds_the_ui_to_localhost():  # MLflow's UI has no auth: never exposed
    lines = [line for line in (REPO / "Makefile").read_text().splitlines()
             if "pipeline.tools.ui" in line]  # fmt: skip
    assert lines and all("--host 127.0.0.1" in line for line in lines), lines


def test_a_stage_run_by_a_python_without_the_packages_says_so_in_one_line():
    command = [sys.executable, "-S", "-m", "pipeline.train"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: this Python ({sys.executable}) lacks the project's packages (no module mlflow): "
        "run from the project's venv: source .venv/bin/activate\n"
    )
    imported = subprocess.run([sys.executable, "-S", "-c", "import pipeline"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert imported.returncode == 0, imported.stderr  # an import alone is never checked
