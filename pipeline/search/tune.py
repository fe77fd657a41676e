"""Search hyperparameters with Optuna; each trial a DVC experiment and an MLflow run.

    python -m pipeline.search.tune [--workers N]     # make tune; start it on several machines too

The search space, metric, budget and study storage are `tune:` in params.yaml; the workers
(here and on other machines) share the study. See pipeline/search/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pipeline.params.tools as tools
import pipeline.search.trials as trials
import pipeline.tracking.store as tracking
from pipeline.runtime import cli


def run(params: tools.ToolParams, params_file: str, workers: int = 1) -> None:
    """Work on the study here and in `workers - 1` more processes on this machine."""
    cli.unwind_on_signals()  # SIGTERM as Ctrl-C: the worker stops its trial's experiment first
    others = trials.spawn_workers(["--params", params_file], workers - 1)
    try:
        trials.work(params, Path(params_file).resolve().parent)
    except KeyboardInterrupt:
        for worker in others:  # each stops its own trial likewise
            worker.terminate()
        sys.stderr.write("error: interrupted; a trial that was running is marked failed\n")
        raise SystemExit(130) from None
    finally:
        codes = [worker.wait() for worker in others]
    if any(codes):
        raise SystemExit(f"error: {sum(1 for code in codes if code)} worker(s) failed")


def worker_count(text: str) -> int:
    if int(text) < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return int(text)


ARGUMENTS = {"--workers": {"type": worker_count, "default": 1, "help": "processes on this machine"}}


def main(argv: list[str] | None = None) -> None:
    expected = (tracking.TrackingError, trials.PrepareError)
    cli.run_command(run, argv, __doc__, ARGUMENTS, expected, tools.load_params_or_exit)


if __name__ == "__main__":
    main()
