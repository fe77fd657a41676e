"""Processes of this machine, through psutil: alive or not, a search by command line, a process
group stopped, the environment a child gets."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path

import psutil


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one; else all)."""
    with contextlib.suppress(AttributeError, psutil.Error):
        return len(psutil.Process().cpu_affinity()) or 1
    return psutil.cpu_count() or 1


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs: it exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's: it exists


def processes(matching: Callable[[list[str], Callable[[], dict[str, str]]], bool]) -> list[int]:
    """Pids of this machine's other processes whose command line and (read only when asked)
    environment match; never an ancestor (`time python -m ...`, `uv run` carry the same words)."""
    me = psutil.Process()
    found, own = [], {me.pid, *(parent.pid for parent in me.parents())}
    for process in psutil.process_iter(["cmdline"]):
        if process.pid in own:
            continue
        with contextlib.suppress(psutil.Error):  # ended meanwhile, or not ours to read
            if matching(process.info["cmdline"] or [], process.environ):
                found.append(process.pid)
    return found


def runs_module(cmdline: list[str], *modules: str) -> bool:
    """Whether a command line is `python -m MODULE ...` for one of `modules`."""
    return any(first == "-m" and second in modules for first, second in pairwise(cmdline))


def stop_group(leader: int, timeout: float) -> None:
    """SIGTERM to the process group `leader` leads, SIGKILL to those left after `timeout` s."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == leader:
                members.append(process)
    try:
        os.killpg(leader, signal.SIGTERM)
    except ProcessLookupError:
        return
    _, alive = psutil.wait_procs(members, timeout=timeout)
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=timeout)


def environment_without(*prefixes: str) -> dict[str, str]:
    """This process's environment without the variables whose names start with `prefixes`."""
    return {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}


def tools_environment(environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environment` (this process's) with this interpreter's folder first on PATH: a child's
    `dvc`, `python` and `mlflow` are this project's."""
    environment = dict(os.environ if environment is None else environment)
    tools = str(Path(sys.executable).parent)
    return environment | {"PATH": f"{tools}{os.pathsep}{environment.get('PATH', '')}"}


def failure_reason(output: str, otherwise: str) -> str:
    """Why a command failed: its first `error:` line, else DVC's first `ERROR` line, else its last
    line; `otherwise` when it printed none."""
    lines = [line for line in output.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("error:")]
    tools = [line for line in lines if line.startswith("ERROR")]
    return (own or tools or lines[-1:] or [otherwise])[0]
