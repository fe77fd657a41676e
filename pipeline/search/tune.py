"""Search hyperparameters with Optuna; each trial a DVC experiment and an MLflow run.

    python -m pipeline.search.tune [--workers N]     # make tune; start it on several machines too

The search space, metric, budget and study storage are `tune:` in params.yaml; the workers
(here and on other machines) share the study. See pipeline/search/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pipeline.params.config as config
import pipeline.params.tools as tools
import pipeline.search.trials as trials
import pipeline.tracking.store as tracking
from pipeline.runtime.cli import setup_logging, unwind_on_signals


def main(argv: list[str] | None = None) -> None:
    parser = config.params_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine (default: 1)"
    )
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error("--workers must be at least 1")
    params = tools.load_params_or_exit(arguments.params)
    setup_logging()
    unwind_on_signals()  # SIGTERM as Ctrl-C: the worker stops its trial's experiment first
    root = Path(arguments.params).resolve().parent
    others = trials.spawn_workers(["--params", arguments.params], arguments.workers - 1)
    try:
        trials.work(params, root)
    except (tracking.TrackingError, trials.PrepareError) as error:
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        for worker in others:  # each stops its own trial likewise
            worker.terminate()
        sys.stderr.write("error: interrupted; a trial that was running is marked failed\n")
        raise SystemExit(130) from None
    finally:
        codes = [worker.wait() for worker in others]
    if any(codes):
        raise SystemExit(f"error: {sum(1 for code in codes if code)} worker(s) failed")


if __name__ == "__main__":
    main()
