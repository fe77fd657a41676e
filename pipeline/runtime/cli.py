"""A command line around a `run()`: arguments, logging, signals and exit codes, for the stages
(run_stage) and for every other command (run_command)."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # imported where a command needs it: exit_now alone must cost nothing
    import pipeline.params.config as config


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines a person reads in `dvc repro` output (and a server's or a tool's)."""
    # MLflow's tqdm bars redraw with carriage returns: in a log they are noise (true: shown).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def exit_now() -> NoReturn:
    """End a finished stage command: exit handlers (autograph's, MLflow's temporary files) run,
    the interpreter's teardown, seconds of collecting TensorFlow's graphs for memory the OS takes
    back anyway, does not."""
    # private: atexit's public API has no call that runs the handlers now; os._exit skips them,
    # and sys.exit would run the teardown this avoids.
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


PAUSED_FOR: set[str] = set()  # the imports first_import has paused the collector for


@contextlib.contextmanager
def first_import(name: str) -> Iterator[None]:
    """A block that loads a large library (TensorFlow; MLflow and its store) for the first time
    in this process: Python's cyclic garbage collector paused in it, and what is alive at its
    end frozen (gc.freeze: never scanned again, never freed).

    Such a library leaves hundreds of thousands of objects that live as long as the process.
    The collector's full passes over them, while they load and at every full pass after, cost
    about a fifth of the load and slowed the work that followed. Garbage pending at the end is
    frozen with them, so each name pauses once per process (a test run calls this many times).
    """
    if name in PAUSED_FOR or not gc.isenabled():
        yield
        return
    PAUSED_FOR.add(name)
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def unwind_on_signals() -> None:
    """SIGTERM (`dvc queue kill`, schedulers, `kill`) and SIGINT raise KeyboardInterrupt, so
    `finally` blocks run as on Ctrl-C."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGINT too: a process started in the background, or by a test runner's worker, inherits
    # SIGINT ignored, and Python then leaves it ignored.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, interrupt)


def run_stage(
    run: Callable[[config.Params], object],
    argv: list[str] | None,
    description: str | None,
    expected: tuple[type[Exception], ...] = (),
) -> None:
    """Validate params, run, and turn known failures (and SIGTERM, as Ctrl-C) into one line."""
    import pipeline.params.config as config

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
    # A failed command frees its TensorFlow objects while TensorFlow's runtime is still up: after
    # a failed multi-worker run tf.distribute's thread pool, still referenced by the traceback,
    # otherwise died with "OSError: Bad file descriptor". Not in a long-lived process (a test
    # run), where a full collection frees everything earlier callers left behind.
    if argv is None:
        gc.collect()
    if failure:
        raise SystemExit(failure)


def run_command(
    run: Callable[..., object],
    argv: list[str] | None,
    description: str | None,
    arguments: dict[str, dict[str, Any]],
    expected: tuple[type[Exception], ...] = (),
    load: Callable[[str], object] | None = None,
    interrupted: str | None = None,
) -> None:
    """A command's `main()`: `arguments` (argparse's keywords by flag, plus `--params` loaded
    with `load` and its `params_file`) become run's; an `expected` error, or with `interrupted`
    SIGTERM, is one `error:` line; exits with run's int result or its result's `exit_code`."""
    import pipeline.params.config as config

    parser = config.params_parser() if load else argparse.ArgumentParser()
    parser.description = (description or "").partition("\n")[0]
    exclusive = None  # one group of the arguments marked "exclusive" (an empty one breaks usage)
    for flag, options in arguments.items():
        options, target = dict(options), parser
        if options.pop("exclusive", False):
            target = exclusive = exclusive or parser.add_mutually_exclusive_group()
        target.add_argument(flag, **options)
    values = vars(parser.parse_args(argv))
    if load is not None:
        if "params_file" in inspect.signature(run).parameters:
            values["params_file"] = values["params"]
        values["params"] = load(values["params"])
    setup_logging()
    if interrupted:
        unwind_on_signals()
    try:
        result = run(**values)
    except expected as error:
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        if not interrupted:
            raise
        raise SystemExit(f"error: {interrupted}") from None
    code = result if isinstance(result, int) else getattr(result, "exit_code", None)
    if code is not None:
        raise SystemExit(code)
