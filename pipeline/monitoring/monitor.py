"""`make monitor`: test a window of the prediction log against the reference; exit 1 on drift.

    python -m pipeline.monitoring.monitor [--since 24h | --since 2026-05-01T12:00] [--params FILE]

Each served model's rows are tested against its own reference; report.md and drift.png go to
`monitor.report_dir`, and all is logged to the MLflow experiment `<mlflow.experiment>-monitoring`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

import pipeline.params.tools as tools
import pipeline.tracking.store as tracking
from pipeline.data.files import write_text
from pipeline.monitoring import drift
from pipeline.monitoring.drift import CLASS_MIX, SERVED, SHADOW, TESTED, ModelVerdict, Verdict
from pipeline.monitoring.prediction_log import LogError, read_predictions
from pipeline.monitoring.reference import ModelReference, reference_of
from pipeline.runtime import cli

log = logging.getLogger(__name__)

DURATION = re.compile(r"^([1-9][0-9]*)([mhdw])$")
SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
REPORT_NAME = "report.md"
EXPERIMENT_SUFFIX = "-monitoring"
TEST_METRICS = ("p_value", "distance", "window", "reference")  # each test's, in the run


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


def rows_by_model(window: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(model, role, its rows) for each model in the window, a shadow's with its own answers."""
    groups = [(model, SERVED, rows) for model, rows in window.groupby("model", sort=False)]
    shadowed = window.dropna(subset=["shadow_model"])
    for model, rows in shadowed.groupby("shadow_model", sort=False):
        answers = {"predicted": rows["shadow_predicted"], "confidence": rows["shadow_confidence"]}
        groups.append((model, SHADOW, rows.assign(**answers)))
    return sorted(groups, key=lambda group: (group[1] != SERVED, -len(group[2])))


def judge(
    window: pd.DataFrame,
    references: dict[str, ModelReference],
    settings: tools.MonitorParams,
    since: float,
    until: float,
) -> Verdict:
    """Each model's rows in `window` against its own reference, when it has one and enough."""
    limits = drift.Thresholds(settings.alpha, settings.min_distance)
    models = []
    for model, role, rows in rows_by_model(window):
        records, source = references[model].records, references[model].source
        tested = records is not None and len(rows) >= settings.min_predictions
        findings = drift.findings(records, rows, limits) if tested else []
        size = 0 if records is None else len(records)
        models.append(ModelVerdict(model, role, len(rows), source, size, findings))
    bounds = [datetime.datetime.fromtimestamp(at, datetime.UTC) for at in (since, until)]
    counts = (len(window), settings.min_predictions)
    return Verdict(*bounds, *counts, limits, models, drift.agreements(window))


def figure_name(index: int) -> str:
    """drift.png for the first model tested; then drift-2.png, drift-3.png, ..."""
    return "drift.png" if index == 0 else f"drift-{index + 1}.png"


def markdown(verdict: Verdict) -> str:
    """The page: the verdict, each model's tests against its own reference, the shadow's."""
    when = f"{verdict.since:%Y-%m-%d %H:%M} to {verdict.until:%Y-%m-%d %H:%M} UTC"
    limits = verdict.thresholds
    rule = f"p-value below {limits.alpha:g} and distance from {limits.min_distance:g}"
    if verdict.drifted:
        head = f"**Drift: {', '.join(verdict.drifted)}** ({rule})."
    elif verdict.tested:
        head = f"**No drift** ({rule})."
    else:
        head = "**No verdict**: no model had a reference and enough predictions."
    lines = [f"# Monitoring: {verdict.predictions} predictions, {when}", "", head, ""]
    tested = 0
    for judged in verdict.models:
        lines += model_section(judged, verdict.min_predictions)
        if judged.tested:
            lines += [f"![reference and window]({figure_name(tested)})", ""]
            tested += 1
    if verdict.agreements:
        table = ["| served | shadow | images both scored | same class |", "|---|---|---|---|"]
        lines += ["## Shadow agreement", "", *table] + [
            f"| {agreed.model} | {agreed.shadow} | {agreed.images} | {agreed.share:.1%} |"
            for agreed in verdict.agreements
        ]
        lines.append("")
    return "\n".join(lines)


def model_section(judged: ModelVerdict, min_predictions: int) -> list[str]:
    title = f"{judged.role.capitalize()}: {judged.model} ({judged.predictions} predictions)"
    lines = [f"## {title}", ""]
    if judged.reference_rows == 0:
        return lines + [f"Reference: {judged.reference}. **No verdict** for this model.", ""]
    lines += [f"Reference: {judged.reference} ({judged.reference_rows} test images).", ""]
    if not judged.tested:
        return lines + [f"**No verdict**: fewer than {min_predictions} predictions.", ""]
    moved = f"Drift: {', '.join(judged.drifted)}" if judged.drifted else "No drift"
    lines += [
        f"**{moved}**.",
        "",
        "| quantity | test | p-value | distance | what moved | drift |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {found.name} | {found.test} | {found.p_value:.2g} | {found.distance:.2f} "
        f"| {found.detail} | {'**yes**' if found.drifted else 'no'} |"
        for found in judged.findings
    ]
    return [*lines, ""]


def distributions(reference: pd.DataFrame, window: pd.DataFrame, judged: ModelVerdict) -> Figure:
    """A histogram per tested quantity and the class mix as bars; what moved titled in red."""
    moved = set(judged.drifted)
    figure = Figure(figsize=(12, 6.5), layout="constrained")
    figure.suptitle(f"{judged.role} {judged.model}: window against its reference")
    grid = figure.subplots(2, 3).ravel()
    for axes, name in zip(grid, TESTED, strict=False):
        values = np.concatenate([reference[name].to_numpy(float), window[name].to_numpy(float)])
        bins = np.histogram_bin_edges(values, bins=30)
        style = {"bins": bins, "density": True, "alpha": 0.55, "histtype": "stepfilled"}
        for sample, label in ((reference, "reference"), (window, "window")):
            axes.hist(sample[name], label=label, **style)
        axes.set_title(name, color="red" if name in moved else "black")
        axes.legend(fontsize=8)
    axes = grid[len(TESTED)]
    classes = sorted(set(reference["predicted"]) | set(window["predicted"]))
    for offset, sample, label in ((-0.2, reference, "reference"), (0.2, window, "window")):
        shares = sample["predicted"].value_counts(normalize=True).reindex(classes, fill_value=0)
        axes.bar(np.arange(len(classes)) + offset, shares, width=0.4, label=label)
    ticks = {"xticks": range(len(classes)), "xticklabels": [str(label) for label in classes]}
    axes.set(xlabel="predicted class", ylabel="share", **ticks)
    axes.set_title(CLASS_MIX, color="red" if CLASS_MIX in moved else "black")
    axes.legend(fontsize=8)
    return figure


def write_report(
    rows: dict[str, pd.DataFrame],
    references: dict[str, ModelReference],
    verdict: Verdict,
    folder: Path,
) -> list[Path]:
    """report.md, and a figure for each model tested; the files written."""
    from pipeline.reports import figures

    written = [folder / REPORT_NAME]
    write_text(written[0], markdown(verdict))
    tested = [judged for judged in verdict.models if judged.tested]
    for index, judged in enumerate(tested):
        written.append(folder / figure_name(index))
        key = (judged.model, judged.role)
        drawn = distributions(references[judged.model].records, rows[key], judged)
        figures.save(drawn, written[-1])
    return written


def run_metrics(verdict: Verdict) -> dict[str, float]:
    """The run's metrics: the window's size, the verdict, each test, the shadow's agreement."""
    values = {"predictions": float(verdict.predictions), "drift": float(bool(verdict.drifted))}
    for index, judged in enumerate(verdict.models):
        # the first served model's are the plain metrics (one chart over time per quantity)
        prefix = "" if index == 0 and judged.role == SERVED else f"{judged.role}{index}/"
        for found, kind in itertools.product(judged.findings, TEST_METRICS):
            values[f"{prefix}{kind}/{found.name}"] = getattr(found, kind)
    if verdict.agreements:  # all shadows together (the run's tag names them)
        images = sum(agreed.images for agreed in verdict.agreements)
        agreeing = sum(agreed.share * agreed.images for agreed in verdict.agreements)
        values |= {"shadow_images": float(images), "shadow_agreement": agreeing / images}
    return values


def run_tags(verdict: Verdict) -> dict[str, str]:
    """Which models the window held, what each was compared with, what moved."""
    served = [judged.model for judged in verdict.models if judged.role == SERVED]
    shadows = [judged.model for judged in verdict.models if judged.role == SHADOW]
    references = "; ".join(f"{judged.model}: {judged.reference}" for judged in verdict.models)
    return {
        "monitor.drifted": ", ".join(verdict.drifted) or "none",
        "monitor.models": ", ".join(served) or "none",
        "monitor.shadows": ", ".join(shadows) or "none",
        "monitor.references": references[:5000] or "none",  # MLflow's tag value limit is 8000
    }


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
        window = {"since": verdict.since.isoformat(), "until": verdict.until.isoformat()}
        limits = dataclasses.asdict(verdict.thresholds)  # alpha, min_distance
        mlflow.log_params(window | limits | {"log": params.monitor.log_path})
        mlflow.log_metrics(run_metrics(verdict))
        mlflow.set_tags(run_tags(verdict) | tracking.process_tags())
        for path in files:
            mlflow.log_artifact(str(path), "monitoring")
    return run.info.run_id


def say(verdict: Verdict, where: str) -> None:
    """The verdict in one line per model, and the shadow's agreement."""
    since = f"since {verdict.since:%Y-%m-%d %H:%M:%S} UTC"
    if not verdict.models:
        log.warning("no predictions %s: no verdict (%s)", since, where)
    for judged in verdict.models:
        what = f"{judged.predictions} predictions of {judged.role} {judged.model} {since}"
        if judged.reference_rows == 0:
            log.warning("%s: no reference (%s): no verdict (%s)", what, judged.reference, where)
        elif not judged.tested:
            needed = verdict.min_predictions
            log.warning("only %s (%d needed): no verdict (%s)", what, needed, where)
        elif judged.drifted:
            moved = ", ".join(judged.drifted)
            log.warning("drift in %s: %s; reference: %s (%s)", what, moved, judged.reference, where)
        else:
            log.info("no drift in %s; reference: %s (%s)", what, judged.reference, where)
    for agreed in verdict.agreements:
        shares = (agreed.shadow, agreed.model, 100 * agreed.share, agreed.images)
        log.info("shadow %s agreed with %s on %.1f%% of %d images", *shares)


def models_in(window: pd.DataFrame) -> list[str]:
    named = list(window["model"]) + list(window["shadow_model"].dropna())
    return list(dict.fromkeys(named))


def references_for(params: tools.ToolParams, models: list[str]) -> dict[str, ModelReference]:
    if not models:
        return {}
    import mlflow

    tracking.use_store(params.mlflow)
    client = mlflow.MlflowClient()
    with tracking.server_lost_as_error():
        return {model: reference_of(model, client) for model in models}


def run(params: tools.ToolParams, since: str | None = None, now: float | None = None) -> Verdict:
    """Read, test, report and log one window; `since` as --since takes it."""
    settings = params.monitor
    until = time.time() if now is None else now
    start = since_time(since or settings.window, until)
    window = read_predictions(settings.log_path, start)
    window = window[window["time"] <= pd.Timestamp(until, unit="s", tz="UTC")]
    references = references_for(params, models_in(window))
    verdict = judge(window, references, settings, start, until)
    rows = {(model, role): part for model, role, part in rows_by_model(window)}
    files = write_report(rows, references, verdict, Path(settings.report_dir))
    run_id = log_run(params, verdict, files)
    say(verdict, f"{files[0]}, MLflow run {run_id}")
    return verdict


SINCE = "a duration back (90m, 24h, 7d, 2w), a date or time (2026-05-01T12:00); monitor.window"
ARGUMENTS = {"--since": {"type": since_argument, "help": SINCE}}


def main(argv: list[str] | None = None) -> None:
    expected, load = (LogError, tracking.TrackingError), tools.load_params_or_exit
    cli.run_command(run, argv, __doc__, ARGUMENTS, expected, load, interrupted="interrupted")


if __name__ == "__main__":
    main()
