"""What a benchmark runs in: a scratch copy of this repo with its own MLflow store, a free port."""

import contextlib
import io
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.runtime.processes import environment_without, tools_environment

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def scratch_repo(prefix: str, iterations: int | None = None, baseline: bool = False,
                 revision: str | None = None) -> Iterator[tuple[Path, dict[str, str]]]:  # fmt: skip
    """The working tree (or `revision`) in a new git and DVC repo reading `make repro`'s data, with
    `baseline` reproduced and committed; yields it and the environment for `dvc` there."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:  # the working tree: a commit of the edits, refs untouched
        tree = revision or git("stash", "create").strip() or "HEAD"
        with tarfile.open(fileobj=io.BytesIO(git("archive", tree, text=False))) as files:
            files.extractall(scratch, filter="data")
        params = scratch / "params.yaml"
        mirror = f"    - kind: local\n      path: {REPO / 'data/raw/mnist.npz'}\n    - kind: url"
        text = params.read_text().replace("    - kind: url", mirror, 1)
        if iterations:
            text = text.replace("iterations: 2000", f"iterations: {iterations}", 1)
        params.write_text(text)
        env = tools_environment(environment_without("MLFLOW_", "DVC_")) | {"DVC_NO_ANALYTICS": "1"}
        commands = [["git", "init", "-q"], ["git", "config", "user.name", "bench"],
                    ["git", "config", "user.email", "bench@localhost"],
                    ["dvc", "init", "-q", "-f"]]  # fmt: skip
        if baseline:
            commands += [["dvc", "repro", "-q"], ["git", "add", "-A"],
                         ["git", "commit", "-qm", "baseline"]]  # fmt: skip
        for command in commands:
            run(command, scratch, env)
        yield scratch, env
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def git(*args: str, text: bool = True) -> str | bytes:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=text,
                          check=True).stdout  # fmt: skip


def run(command: list[str], cwd: Path = REPO, env: dict | None = None) -> float:
    """Run `command` to its end, its output kept from the terminal; its wall seconds."""
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]
