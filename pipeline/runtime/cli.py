"""A stage's command line: arguments, logging, signals and exit codes around its `run()`."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import pipeline.params.config as config


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines a person reads in `dvc repro` output (and a server's or a tool's)."""
    # MLflow's tqdm bars ("Downloading artifacts: 100%") redraw with carriage returns: in a
    # log they are noise. Set the variable to true to see them again.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def exit_now() -> NoReturn:
    """End a stage command that finished: exit handlers run, the interpreter's teardown does not.

    By now every output is on disk and the MLflow run is ended. What the teardown would still
    do is collect the training's TensorFlow and tf2onnx objects (graphs of many Python objects)
    and unload modules: seconds of work whose only effect is memory the OS takes back anyway.
    The handlers registered with atexit still run (autograph's and MLflow's temporary files).
    """
    # private: atexit's public API is register/unregister only, with no call that runs the
    # handlers now; os._exit skips them, and sys.exit would run the teardown this avoids.
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def interrupt(signum: int, frame: Any) -> None:
    """A signal handler: SIGTERM (or any) unwinds like Ctrl-C, `finally` blocks and all."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def unwind_on_signals() -> None:
    """SIGTERM (what `dvc queue kill`, most schedulers and `kill` send) and SIGINT raise
    KeyboardInterrupt, so the command unwinds: `finally` blocks run, runs end as KILLED.

    SIGINT gets the handler explicitly too: a process started in the background, or by a test
    runner's worker, inherits SIGINT ignored, and Python then leaves it ignored."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, interrupt)


def run_stage(
    run: Callable[[config.Params], object],
    argv: list[str] | None,
    description: str | None,
    expected: tuple[type[Exception], ...] = (),
) -> None:
    """Validate params, run, and turn known failures into one line and an exit code.

    SIGTERM is handled like Ctrl-C (`unwind_on_signals`): the MLflow run is closed as KILLED
    and no partial output is left behind.
    """
    params = config.load_params_from_cli(argv, description or "")
    setup_logging()
    unwind_on_signals()
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
