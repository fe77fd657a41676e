"""`make monitor`'s findings for people: a short Markdown page and a figure of the distributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from pipeline.monitoring.drift import CLASS_MIX, TESTED, ModelVerdict, Verdict

FIGURE_NAME = "drift.png"  # the first model tested; the next ones drift-2.png, drift-3.png, ...


def figure_name(index: int) -> str:
    return FIGURE_NAME if index == 0 else f"drift-{index + 1}.png"


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
    for offset, (sample, label) in zip(
        (-0.2, 0.2), ((reference, "reference"), (window, "window")), strict=True
    ):
        shares = sample["predicted"].value_counts(normalize=True).reindex(classes, fill_value=0)
        axes.bar(np.arange(len(classes)) + offset, shares, width=0.4, label=label)
    ticks = {"xticks": range(len(classes)), "xticklabels": [str(label) for label in classes]}
    axes.set(xlabel="predicted class", ylabel="share", **ticks)
    axes.set_title(CLASS_MIX, color="red" if CLASS_MIX in moved else "black")
    axes.legend(fontsize=8)
    return figure
