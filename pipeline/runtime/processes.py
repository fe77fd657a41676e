"""Processes of this machine: alive or not, waiting for one to end, ancestry, a /proc search.

What the stages, the search and the team server know of other processes; Linux gives the most
(prctl, pidfd, /proc), and elsewhere each function says what it falls back to.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.5


def die_with_parent(signum: int) -> None:
    """Ask Linux to send `signum` to this process when its parent dies (elsewhere: nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity on Linux; elsewhere all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine runs: it exists and is not a zombie (an exited
    process whose parent has not reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux), or it ended meanwhile
        return (Path("/proc") / str(pid)).exists() or not Path("/proc/self").exists()
    return state != "Z"


def wait_for_exit(pid: int) -> None:
    """Return once process `pid` has ended (a pidfd on Linux; elsewhere by polling)."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # not Linux, or a kernel before 5.3
        while process_alive(pid):
            time.sleep(POLL_S)
        return
    try:
        select.select([handle], [], [])  # readable once the process has exited
    finally:
        os.close(handle)


def stop_with(pid: int) -> None:
    """Stop this process as SIGTERM does (it unwinds, see `run_stage`) when process `pid` ends.

    `make tune` runs a trial as `dvc exp run`, which must not be killed itself: killed while
    it stashes the experiment, it leaves the user's clone on a detached HEAD with the trial's
    params in params.yaml. So the trial's stage watches the worker instead; when the worker
    dies the stage ends, and `dvc` fails the experiment and cleans up as after any failed stage.
    """

    def watch() -> None:
        wait_for_exit(pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name=f"stop-with-{pid}", daemon=True).start()


def lineage() -> set[int]:
    """This process and its ancestors (Linux's /proc; elsewhere just this process)."""
    pids, pid = {os.getpid()}, os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            status = (Path("/proc") / str(pid) / "status").read_text()
        except OSError:
            break
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return pids


def processes(matching: Callable[[bytes, Callable[[], bytes]], bool]) -> list[int]:
    """Pids of this machine's other processes whose command line (NUL-separated) and, read only
    when asked, environment match (Linux's /proc; elsewhere none).

    This process's ancestors are never "other": a wrapper such as `time python -m ...`,
    `nice` or `uv run` carries the same words in its command line.
    """
    found, own = [], lineage()
    for process in Path("/proc").glob("[0-9]*"):
        pid = int(process.name)
        try:
            if pid not in own and matching(
                (process / "cmdline").read_bytes(), (process / "environ").read_bytes
            ):
                found.append(pid)
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def environment_without(*prefixes: str) -> dict[str, str]:
    """This process's environment without the variables whose names start with `prefixes`:
    for a child that must not inherit this process's store (MLFLOW_), DVC run (DVC_) or the
    like."""
    return {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}


def failure_reason(output: str, otherwise: str) -> str:
    """Why a command failed, from its output: the first `error:` line (a stage's or a tool's
    own), else DVC's first `ERROR` line, else the last line; `otherwise` when it printed none."""
    lines = [line for line in output.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("error:")]
    tools = [line for line in lines if line.startswith("ERROR")]
    return (own or tools or lines[-1:] or [otherwise])[0]
