"""`make monitor`: test a window of the prediction log against the reference; exit 1 on drift.

    python -m pipeline.monitoring.monitor [--since 24h | --since 2026-05-01T12:00] [--params FILE]

The window is what the log holds since then (`monitor.window` unless told: a duration
back from now, or a date or time, local unless it names its offset). Each input statistic and
the confidence get a Kolmogorov–Smirnov test against the reference, the predicted-class mix a
chi-square test (pipeline/monitoring/drift.py); a p-value below `monitor.alpha` with a
distance of at least `monitor.min_distance` is drift.
It writes report.md and drift.png to `monitor.report_dir`, reports how often a shadow
model agreed with the served one when the log holds shadow predictions, and logs it all as a
run of the MLflow experiment `<mlflow.experiment>-monitoring`, so each quantity's values over
time are in the UI. Exit codes: 0 no drift (or too few predictions for a verdict), 1 drift
(the line names what moved) or an error.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import pipeline.params.config as config
import pipeline.params.tools as tools
import pipeline.tracking.store as tracking
from pipeline.data.files import write_text
from pipeline.monitoring import drift, drift_report
from pipeline.monitoring.prediction_log import LogError, read_predictions
from pipeline.monitoring.reference import ReferenceUnreadable, read_reference
from pipeline.runtime.cli import setup_logging, unwind_on_signals

log = logging.getLogger(__name__)

DURATION = re.compile(r"^([1-9][0-9]*)([mhdw])$")
SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
REPORT_NAME = "report.md"
EXPERIMENT_SUFFIX = "-monitoring"


@dataclass(frozen=True)
class Verdict:
    """What one look at the log found."""

    since: datetime.datetime  # UTC
    until: datetime.datetime
    predictions: int
    min_predictions: int
    thresholds: drift.Thresholds
    reference: str
    reference_rows: int
    models: dict[str, int]  # version served → its predictions in the window
    findings: list[drift.Finding] = field(default_factory=list)  # empty: too few to test
    agreements: list[drift.Agreement] = field(default_factory=list)

    @property
    def tested(self) -> bool:
        return bool(self.findings)

    @property
    def drifted(self) -> list[str]:
        return drift.drifted(self.findings)

    @property
    def exit_code(self) -> int:
        return 1 if self.drifted else 0


def since_time(text: str, now: float) -> float:
    """`90m`, `24h`, `7d`, `2w` back from `now`, or an ISO date or time → Unix seconds."""
    if match := DURATION.match(text):
        return now - int(match[1]) * SECONDS[match[2]]
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r}: give a duration (90m, 24h, 7d, 2w) or a date or time "
            "(2026-05-01, 2026-05-01T12:00)"
        ) from None
    return moment.timestamp()  # a naive time is local time


def since_argument(text: str) -> str:
    """argparse's check of --since (its time is taken when the run starts)."""
    try:
        since_time(text, time.time())
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def judge(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    settings: tools.MonitorParams,
    since: float,
    until: float,
    source: str = "the reference",
) -> Verdict:
    """The tests of `window` against `reference` (read from `source`), when it holds enough
    predictions."""
    enough = len(window) >= settings.min_predictions
    thresholds = drift.Thresholds(settings.alpha, settings.min_distance)
    return Verdict(
        since=utc(since),
        until=utc(until),
        predictions=len(window),
        min_predictions=settings.min_predictions,
        thresholds=thresholds,
        reference=source,
        reference_rows=len(reference),
        models=window["model"].value_counts().to_dict(),
        findings=drift.compare(reference, window, thresholds) if enough else [],
        agreements=drift.agreements(window),
    )


def utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def write_report(
    reference: pd.DataFrame, window: pd.DataFrame, verdict: Verdict, folder: Path
) -> list[Path]:
    """report.md, and drift.png when there was a test; the files written."""
    from pipeline.reports import figures

    written = [folder / REPORT_NAME]
    write_text(written[0], drift_report.markdown(verdict))
    if verdict.tested:
        written.append(folder / drift_report.FIGURE_NAME)
        figures.save(drift_report.distributions(reference, window, verdict), written[-1])
    return written


def run_metrics(verdict: Verdict) -> dict[str, float]:
    """The run's metrics: the window's size, the verdict, each test, the shadow's agreement."""
    values = {"predictions": float(verdict.predictions), "drift": float(bool(verdict.drifted))}
    for found in verdict.findings:
        values |= {
            f"p_value/{found.name}": found.p_value,
            f"distance/{found.name}": found.distance,
            f"window/{found.name}": found.window,
            f"reference/{found.name}": found.reference,
        }
    if verdict.agreements:  # all shadows together (the run's tag names them)
        images = sum(agreed.images for agreed in verdict.agreements)
        agreeing = sum(agreed.share * agreed.images for agreed in verdict.agreements)
        values |= {"shadow_images": float(images), "shadow_agreement": agreeing / images}
    return values


def log_run(params: tools.ToolParams, verdict: Verdict, files: list[Path]) -> str:
    """The look as a run of the monitoring experiment; its run id."""
    import mlflow

    experiment = params.mlflow.experiment + EXPERIMENT_SUFFIX
    experiment_id = tracking.use_store(params.mlflow.model_copy(update={"experiment": experiment}))
    name = f"monitor {verdict.until:%Y-%m-%d %H:%M}"
    with (
        tracking.server_lost_as_error(),
        mlflow.start_run(experiment_id=experiment_id, run_name=name) as run,
    ):
        mlflow.log_params(
            {
                "since": verdict.since.isoformat(),
                "until": verdict.until.isoformat(),
                "alpha": verdict.thresholds.alpha,
                "min_distance": verdict.thresholds.min_distance,
                "reference": verdict.reference,
                "log": params.monitor.log_path,
            }
        )
        mlflow.log_metrics(run_metrics(verdict))
        mlflow.set_tags(
            {
                "monitor.drifted": ", ".join(verdict.drifted) or "none",
                "monitor.models": ", ".join(verdict.models) or "none",
                "monitor.shadows": ", ".join(agreed.shadow for agreed in verdict.agreements)
                or "none",
            }
            | tracking.process_tags()
        )
        for path in files:
            mlflow.log_artifact(str(path), "monitoring")
    return run.info.run_id


def say(verdict: Verdict, where: str) -> None:
    """The verdict in one line (naming what moved), and the shadow's agreement."""
    since = f"{verdict.predictions} predictions since {verdict.since:%Y-%m-%d %H:%M:%S} UTC"
    if not verdict.tested:
        log.warning("only %s (%d needed): no verdict (%s)", since, verdict.min_predictions, where)
    elif verdict.drifted:
        log.warning("drift in %s: %s (%s)", since, ", ".join(verdict.drifted), where)
    else:
        log.info("no drift in %s (%s)", since, where)
    for agreed in verdict.agreements:
        log.info(
            "shadow %s agreed with %s on %.1f%% of %d images",
            agreed.shadow,
            agreed.model,
            100 * agreed.share,
            agreed.images,
        )


def run(params: tools.ToolParams, since: str | None = None, now: float | None = None) -> Verdict:
    """Read, test, report and log one window; `since` as --since takes it."""
    settings = params.monitor
    until = time.time() if now is None else now
    start = since_time(since or settings.window, until)
    reference = read_reference(params.paths.monitor_reference)
    window = read_predictions(settings.log_path, start)
    window = window[window["time"] <= pd.Timestamp(until, unit="s", tz="UTC")]
    verdict = judge(reference, window, settings, start, until, params.paths.monitor_reference)
    files = write_report(reference, window, verdict, Path(settings.report_dir))
    run_id = log_run(params, verdict, files)
    say(verdict, f"{files[0]}, MLflow run {run_id}")
    return verdict


def main(argv: list[str] | None = None) -> None:
    parser = config.params_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--since",
        type=since_argument,
        help="a duration back from now (90m, 24h, 7d, 2w) or a date or time "
        "(2026-05-01T12:00); default: monitor.window",
    )
    args = parser.parse_args(argv)
    params = tools.load_params_or_exit(args.params)
    setup_logging()
    unwind_on_signals()
    try:
        verdict = run(params, args.since)
    except (LogError, ReferenceUnreadable, tracking.TrackingError) as error:
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted") from None
    raise SystemExit(verdict.exit_code)


if __name__ == "__main__":
    main()
