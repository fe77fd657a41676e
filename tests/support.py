"""The tests' helpers; conftest.py holds the fixtures built on them."""

import ast
import contextlib
import copy
import gzip
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from pipeline.data.files import sha256_array
from pipeline.data.sources import IDX_FILES
from pipeline.runtime.processes import environment_without, tools_environment
from pipeline.tracking import store

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this environment's tools: dvc, mlflow, moto_server
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost",
}  # fmt: skip
N_TRAIN, N_TEST = 120, 40


# --- tiny data and params -----------------------------------------------------------------


def make_mnist(n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> dict:
    """Random uint8 images with every class present; labels cycle 0..9."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


def with_value(raw: dict, key: str, value: object) -> dict:
    """A deep copy of a params mapping with the dotted `key` set to `value`."""
    changed = copy.deepcopy(raw)
    *parents, last = key.split(".")
    section = changed
    for part in parents:
        section = section[part]
    section[last] = value
    return changed


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape
    )
    return header + array.tobytes()


def write_idx_folder(folder: Path, arrays: dict, gzipped: bool = True) -> Path:
    """Write the four standard IDX files, as a private mirror would hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in IDX_FILES.items():
        raw = idx_bytes(arrays[split])
        if gzipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


def array_hashes(arrays: dict) -> dict[str, str]:
    return {name: sha256_array(arrays[name]) for name in IDX_FILES}


def tiny_settings(raw: dict, mirror: Path, arrays: dict) -> dict:
    """Params with a local mirror of `arrays` and a tiny model and training: the tests' recipe."""
    raw = copy.deepcopy(raw)
    raw["data"]["sources"] = [{"kind": "local", "path": str(mirror)}]
    raw["data"]["sha256"] = array_hashes(arrays)
    raw["data"]["validation_size"] = 20
    raw["model"] |= {"num_units": 8, "unroll": False}  # a small graph: quick to build
    raw["train"] |= {"batch_size": 16, "iterations": 6, "log_every": 3, "steps_per_execution": 3}
    raw["evaluate"] |= TINY_GATE
    return raw


# Random images teach nothing: the tiny recipe's gate passes any model on the floors and
# checks, and a version becomes champion by any gain on validation at all.
TINY_GATE = {
    "min_test_accuracy": 0.0,
    "min_class_f1": 0.0,
    "min_gain": 1e-6,
    "min_shift_agreement": 0.0,
    "max_noise_drop": 1.0,
}


def tiny_params(root: Path, mirror: Path, arrays: dict) -> dict:
    """The repo's params.yaml with the tiny recipe and every path under `root`."""
    raw = tiny_settings(yaml.safe_load((REPO / "params.yaml").read_text()), mirror, arrays)
    raw["paths"] = {key: str(root / value) for key, value in raw["paths"].items()}
    monitor = raw["monitor"]  # a server's prediction log and make monitor's files too
    for key in ("log_path", "report_dir"):
        monitor[key] = str(root / monitor[key])
    return raw


def write_params(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def use_store_at(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stages find the MLflow store at `root` through DVC_ROOT, as under DVC."""
    monkeypatch.setenv("DVC_ROOT", str(root))
    # mlflow.set_tracking_uri/set_registry_uri export these. monkeypatch restores only what it
    # recorded, and delenv of an absent variable records nothing: setenv first, so a value a
    # stage sets during the test is removed afterwards instead of leaking into later tests.
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "DVC_EXP_NAME",
        "DVC_EXP_BASELINE_REV",
    ):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return root


def client_for(root: Path):
    """An MLflow client of the repo's own mlflow.db, not the process defaults."""
    return store.client_for(f"sqlite:///{root / 'mlflow.db'}")


# --- processes and servers, by pid ---------------------------------------------------------


def copy_store(database: Path, copy: Path) -> Path:
    """A live SQLite store copied by its backup API (copying the file can drop its locks)."""
    with contextlib.closing(sqlite3.connect(database)) as source:
        with contextlib.closing(sqlite3.connect(copy)) as target:
            source.backup(target)
    return copy


def own_store(trained, folder: Path):
    """A copy of the trained store in `folder`, made MLflow's current one; artifacts shared."""
    import mlflow

    store = f"sqlite:///{copy_store(trained.root / 'mlflow.db', folder / 'mlflow.db')}"
    mlflow.set_tracking_uri(store)  # create_model_version looks the logged model up there
    mlflow.set_registry_uri(store)
    return mlflow.MlflowClient(tracking_uri=store, registry_uri=store)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    """Whether `predicate()` became true within `timeout` seconds, asking every `interval`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_until_healthy(
    url: str, process: subprocess.Popen, log: Path, deadline_s: float = 120
) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy within {deadline_s} s")


def memory_kb(pid: int) -> int:
    """A process's peak resident memory in kB (VmHWM: psutil has no peak)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def mapped_files(pid: int) -> str:
    """The shared libraries and files a process has mapped (what it has loaded), a line each."""
    return "\n".join(region.path for region in psutil.Process(pid).memory_maps())


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: its children, theirs, and so on."""
    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def command_line(pid: int) -> str:
    """A process's command line, words joined by spaces ("" once it has ended)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:  # ended (a zombie has no command line either) or not ours
        return ""


@dataclass(frozen=True)
class Running:
    url: str  # http://127.0.0.1:<port>
    pid: int


@contextlib.contextmanager
def running(
    module: str,
    args: list[str],
    health: str,
    log: Path,
    env: dict | None = None,
    cwd: Path = REPO,
) -> Iterator[Running]:
    """`python -m module args --port P` in `cwd` until the block ends; SIGTERM must stop it."""
    port = free_port()
    environment = environment_without("MLFLOW_")
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd, env=environment | (env or {}), stdout=output, stderr=output,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url + health, process, log)
        yield Running(url, process.pid)
    finally:
        process.terminate()
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    # uvicorn finishes open requests, then re-raises the signal: exit by SIGTERM, or 0
    assert code in (0, -signal.SIGTERM), f"{module} did not stop cleanly on SIGTERM (exit {code})"


def post_json(
    url: str, body: bytes, content_type: str = "application/json", headers: dict | None = None
) -> tuple[int, dict]:
    """POST a body; the status and the decoded JSON answer, 4xx and 5xx included."""
    headers = {"Content-Type": content_type} | (headers or {})
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def invocations(url: str, images) -> tuple[int, dict]:
    """POST images (an array) to a server's /invocations as JSON; its status and answer."""
    return post_json(url + "/invocations", json.dumps({"inputs": images.tolist()}).encode())


def logged_by(app: str, path: str | Path, since: float) -> list:
    """The prediction log's rows of `app` since `since` (none before its first batch, nor while
    its writer has made the file but not yet its table)."""
    from pipeline.monitoring.prediction_log import LogError, read_predictions

    try:
        rows = read_predictions(path, since=since)
    except LogError:
        return []
    return rows[rows["app"] == app]


def prometheus_samples(url: str) -> dict[tuple[str, tuple], float]:
    """A server's GET /metrics, parsed by prometheus-client: (sample name, labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples}  # fmt: skip


def sample_total(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))  # fmt: skip


def postgres_missing() -> str:
    """Why the PostgreSQL tests cannot run here ("" when they can): no binaries."""
    from pipeline.team import postgres

    try:
        postgres.binary("initdb")
    except postgres.PostgresError as error:
        return str(error)
    return ""


# --- scratch copies of this repo -----------------------------------------------------------


def environment(**extra: str) -> dict[str, str]:
    """The environment for `dvc` and stages in a scratch repo: no MLFLOW_/DVC_, a git identity."""
    env = tools_environment(environment_without("MLFLOW_", "DVC_"))
    return env | {"DVC_NO_ANALYTICS": "1"} | GIT_IDENTITY | extra


def run(
    command: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command in a scratch repo; a failure fails the test with its output."""
    result = subprocess.run(command, cwd=cwd, env=env or environment(), capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result


# What `main` commits of a `dvc repro` at the default params: a scratch repo with other params
# starts without them, as one never reproduced.
BASELINE_RECORD = ("dvc.lock", "reports/metrics.json", "reports/per_class.csv",
                   "reports/confusion.csv", "reports/figures")  # fmt: skip


def tiny_repo(base: Path, name: str = "repo") -> Path:
    """This project as a committed git repo with tiny params, a local mirror, no baseline record."""
    mnist = make_mnist()
    mirror = write_idx_folder(base / "mirror", mnist, gzipped=False)
    repo = base / name  # the tracked files, as a fresh clone has them (working-tree content)
    for listed in run(["git", "ls-files", "--cached"], REPO).stdout.split():
        if (REPO / listed).is_file():
            (repo / listed).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / listed, repo / listed)
    for recorded in map(repo.joinpath, BASELINE_RECORD):
        if recorded.is_dir():
            shutil.rmtree(recorded)
        else:
            recorded.unlink(missing_ok=True)
    params = tiny_settings(yaml.safe_load((repo / "params.yaml").read_text()), mirror, mnist)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    return repo


def clone_state(repo: Path) -> str:
    """The clone's branch, commit and changes to tracked files."""
    return run(["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"], repo).stdout


def run_queue(
    repo: Path, jobs: int = 1, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    """`dvc queue start -j jobs`, then poll `dvc queue status` until nothing is queued or
    running; return the last status. Whatever happens (a timeout, a failed assertion), the
    queue's workers and every process still running inside the repo are stopped on the way out:
    DVC detaches its workers, so nothing else would."""
    try:
        run(["dvc", "queue", "start", "-j", str(jobs)], repo, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = run(["dvc", "queue", "status"], repo, env=env).stdout
            if not any(state in status for state in ("Queued", "Running")):
                return status
            time.sleep(2)
        pytest.fail(f"queue still busy after {timeout} s:\n{status}")
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env or environment(),
                       capture_output=True, timeout=120)  # fmt: skip
        for process in psutil.process_iter():  # what still works inside the repo
            with contextlib.suppress(psutil.Error):
                if process.pid != os.getpid() and Path(process.cwd()).is_relative_to(repo):
                    process.kill()


# --- what a module of pipeline/ imports, and the stages' modules in dvc.yaml ----------------
# Read from the code: every `import`, also inside functions, and module names given as strings
# (as to importlib.util.find_spec), followed through the modules they reach.

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = sorted(DVC_YAML["stages"])


def module_file(name: str) -> Path | None:
    """The file of a `pipeline...` module or package, or None if there is none."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def named_modules(source: str) -> set[str]:
    """`pipeline.*` modules a file imports or names in a string, as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return {name for name in found if name.startswith("pipeline") and module_file(name)}


def imported_files(module: str) -> set[str]:
    """Every file a module's import loads from pipeline/: itself, its packages, what they reach."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:end]) for end in range(1, len(parts))]  # parent packages
        todo += named_modules(module_file(name).read_text())
    return {module_file(name).relative_to(REPO).as_posix() for name in seen}


def stage_module(stage: str) -> str:
    command = DVC_YAML["stages"][stage]["cmd"].split()
    assert command[:2] == ["python", "-m"], f"stage {stage}: cmd is not `python -m MODULE`"
    return command[2]


def linear_onnx(path: Path, weights: np.ndarray, bias: np.ndarray) -> Path:
    """A softmax regression (n, 28, 28) → (n, 10) as an ONNX file: a model with no training."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = {"flat_shape": np.array([-1, 784], np.int64), "weights": weights.astype(np.float32),
                 "bias": bias.astype(np.float32)}  # fmt: skip
    nodes = [
        helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weights"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "softmax_regression",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


# --- a browser and image files -------------------------------------------------------------


# Headless, and nothing fetched behind the test's back (updates, sync, QUIC)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-quic", "--disable-sync", "--no-first-run"]  # fmt: skip


def browser(window: str = "800,900"):
    """Headless Debian chromium through its own chromedriver (never a downloaded browser)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test "
                    "installs them as root: apt-get install chromium chromium-driver)")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--window-size={window}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int = 13000, height: int = 13000) -> bytes:
    """A decompression bomb: a white PNG, 37 kB on disk, 169 MB decoded (13000×13000)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * width  # filter type 0, then the row's pixels
    rows = [compressor.compress(row * 100) for _ in range(height // 100)]
    data = b"".join(rows) + compressor.compress(row * (height % 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))  # fmt: skip
