"""A stage's command line: arguments, logging, signals and exit codes around its `run()`."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pipeline.shared.config as config


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines a person reads in `dvc repro` output (and a server's or a tool's)."""
    # MLflow's tqdm bars ("Downloading artifacts: 100%") redraw with carriage returns: in a
    # log they are noise. Set the variable to true to see them again.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


STOP_WITH_ENV = "PIPELINE_STOP_WITH_PID"
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
    """Whether a process of this machine with that pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def use_onednn(enabled: bool) -> None:
    """TensorFlow's oneDNN kernels on or off; TensorFlow reads this once, when it loads."""
    os.environ[ONEDNN_ENV] = "1" if enabled else "0"


def exit_now() -> NoReturn:
    """End a stage command that finished: exit handlers run, the interpreter's teardown does not.

    By now every output is on disk and the MLflow run is ended. What the teardown would still
    do is collect the training's TensorFlow and tf2onnx objects (graphs of many Python objects)
    and unload modules: seconds of work whose only effect is memory the OS takes back anyway.
    The handlers registered with atexit still run (autograph's and MLflow's temporary files).
    """
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_stage(
    run: Callable[[config.Params], object],
    argv: list[str] | None,
    description: str | None,
    expected: tuple[type[Exception], ...] = (),
) -> None:
    """Validate params, run, and turn known failures into one line and an exit code.

    SIGTERM (what `dvc queue kill` and most schedulers send) is handled like Ctrl-C, so the
    stage unwinds: the MLflow run is closed as KILLED and no partial output is left behind.
    SIGINT gets the handler explicitly too: a process started in the background, or by a test
    runner's worker, inherits SIGINT ignored, and Python then leaves it ignored.
    """
    params = config.load_params_from_cli(argv, description or "")
    setup_logging()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    worker = os.environ.get(STOP_WITH_ENV)
    if worker:  # `make tune`: a trial ends with its worker, and with its `dvc`
        die_with_parent(signal.SIGTERM)
        stop_with(int(worker))
    failure = None
    try:
        run(params)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted; outputs from before this run are untouched\n")
        raise SystemExit(130) from None
    except expected as error:
        failure = f"error: {error}"
    if argv is None and failure is None:
        exit_now()
    # A failed stage frees its TensorFlow objects while TensorFlow's runtime is still up: after
    # a failed multi-worker run tf.distribute's thread pool, still referenced by the error's
    # traceback, otherwise died with "OSError: Bad file descriptor" after the error line.
    # Only as a command (argv None): in a long-lived process (a test run), a full collection
    # frees everything earlier callers left behind.
    if argv is None:
        gc.collect()
    if failure:
        raise SystemExit(failure)
