"""Start a server module as a process on a free port of 127.0.0.1; stop it by its pid."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.runtime.processes import environment_without

from .conftest import REPO


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


@dataclass(frozen=True)
class Running:
    url: str  # http://127.0.0.1:<port>
    pid: int


def memory_kb(pid: int, field: str = "VmHWM") -> int:
    """A process's resident memory from /proc: VmHWM is its peak so far, VmRSS its current."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)))


def mapped_files(pid: int) -> str:
    """The shared libraries and files a process has mapped (what it has loaded)."""
    return Path(f"/proc/{pid}/maps").read_text()


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: its children, theirs, and so on."""
    found, queue = [], [pid]
    while queue:
        below = children(queue.pop())
        found += below
        queue += below
    return found


def command_line(pid: int) -> str:
    """A process's command line, words joined by spaces ("" once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@contextlib.contextmanager
def running(
    module: str, args: list[str], health: str, log: Path, env: dict | None = None
) -> Iterator[Running]:
    """`python -m module args --port P` until the block ends; SIGTERM must stop it cleanly."""
    port = free_port()
    environment = environment_without("MLFLOW_")
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=environment | (env or {}), stdout=output, stderr=output,
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


def write_params(raw: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def post_json(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    """POST a body (JSON unless told); the status and the decoded JSON answer, 4xx and 5xx
    included."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
