"""`make monitor`'s findings for people: a short Markdown page and a figure of the distributions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from pipeline.monitoring.drift import CLASS_MIX, TESTED

if TYPE_CHECKING:
    from pipeline.monitoring.monitor import Verdict

FIGURE_NAME = "drift.png"


def markdown(verdict: Verdict) -> str:
    """The page: the verdict, one row per test, the shadow's agreement, the figure."""
    when = f"{verdict.since:%Y-%m-%d %H:%M} to {verdict.until:%Y-%m-%d %H:%M} UTC"
    lines = [f"# Monitoring: {verdict.predictions} predictions, {when}", ""]
    if not verdict.tested:
        lines += [f"**No verdict**: fewer than {verdict.min_predictions} predictions.", ""]
    else:
        limits = verdict.thresholds
        rule = f"p-value below {limits.alpha:g} and distance from {limits.min_distance:g}"
        moved = f"Drift: {', '.join(verdict.drifted)}" if verdict.drifted else "No drift"
        lines += [f"**{moved}** ({rule}).", ""]
    served = ", ".join(f"{model} ({count})" for model, count in verdict.models.items())
    lines += [
        f"Served: {served or 'nothing'}. Reference: {verdict.reference} "
        f"({verdict.reference_rows} test images).",
        "",
    ]
    if verdict.findings:
        lines += [
            "| quantity | test | p-value | distance | what moved | drift |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {found.name} | {found.test} | {found.p_value:.2g} | {found.distance:.2f} "
            f"| {found.detail} | {'**yes**' if found.drifted else 'no'} |"
            for found in verdict.findings
        ]
        lines.append("")
    if verdict.agreements:
        lines += [
            "## Shadow",
            "",
            "| served | shadow | images both scored | same class |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {agreed.model} | {agreed.shadow} | {agreed.images} | {agreed.share:.1%} |"
            for agreed in verdict.agreements
        ]
        lines.append("")
    if verdict.tested:
        lines += [f"![reference and window]({FIGURE_NAME})", ""]
    return "\n".join(lines)


def distributions(reference: pd.DataFrame, window: pd.DataFrame, verdict: Verdict) -> Figure:
    """Reference against window: a histogram per tested quantity, the class mix as bars; what
    moved is titled in red."""
    moved = set(verdict.drifted)
    figure = Figure(figsize=(12, 6.5), layout="constrained")
    grid = figure.subplots(2, 3).ravel()
    for axes, name in zip(grid, TESTED, strict=False):
        values = np.concatenate([reference[name].to_numpy(float), window[name].to_numpy(float)])
        bins = np.histogram_bin_edges(values, bins=30)
        for sample, label in ((reference, "reference"), (window, "window")):
            axes.hist(
                sample[name],
                bins=bins,
                density=True,
                alpha=0.55,
                label=label,
                histtype="stepfilled",
            )
        axes.set_title(name, color="red" if name in moved else "black")
        axes.legend(fontsize=8)
    axes = grid[len(TESTED)]
    classes = sorted(set(reference["predicted"]) | set(window["predicted"]))
    for offset, (sample, label) in zip(
        (-0.2, 0.2), ((reference, "reference"), (window, "window")), strict=True
    ):
        shares = sample["predicted"].value_counts(normalize=True).reindex(classes, fill_value=0)
        axes.bar(np.arange(len(classes)) + offset, shares, width=0.4, label=label)
    axes.set(
        xticks=range(len(classes)),
        xticklabels=[str(label) for label in classes],
        xlabel="predicted class",
        ylabel="share",
    )
    axes.set_title(CLASS_MIX, color="red" if CLASS_MIX in moved else "black")
    axes.legend(fontsize=8)
    return figure
