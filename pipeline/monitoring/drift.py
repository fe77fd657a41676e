"""Has the traffic moved away from the reference? A two-sample test per quantity (scipy).

Each statistic and the confidence: Kolmogorov–Smirnov (distance: D); the class mix: chi-square
(distance: total variation). Moved: a p-value below `alpha` and a distance from `min_distance`;
a p-value alone calls drift on real digits (MNIST's writers differ in stroke width, in order).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.monitoring.statistics import STATISTICS

TESTED = ("confidence", *STATISTICS)  # the quantities tested one by one
CLASS_MIX = "class_mix"


@dataclass(frozen=True)
class Thresholds:
    alpha: float  # p-values below it: not chance
    min_distance: float  # distances from it on: large enough to matter


@dataclass(frozen=True)
class Finding:
    name: str  # a TESTED column, or CLASS_MIX
    test: str  # which test
    p_value: float
    distance: float  # KS's D, or the class mixes' total variation: 0 (the same) to 1
    reference: float  # the reference's mean (class mix: the share of the class that moved most)
    window: float  # the window's
    drifted: bool
    detail: str  # what moved, in words


@dataclass(frozen=True)
class Agreement:
    model: str
    shadow: str
    images: int
    share: float  # of the images both scored, the share with the same class


def findings(reference: pd.DataFrame, window: pd.DataFrame, limits: Thresholds) -> list[Finding]:
    found = [distribution(name, reference[name], window[name], limits) for name in TESTED]
    return [*found, class_mix(reference["predicted"], window["predicted"], limits)]


def moved(p_value: float, distance: float, limits: Thresholds) -> bool:
    return bool(p_value < limits.alpha and distance >= limits.min_distance)


def distribution(name: str, reference: pd.Series, window: pd.Series, limits: Thresholds) -> Finding:
    result = stats.ks_2samp(reference.to_numpy(float), window.to_numpy(float))
    p_value, distance = float(result.pvalue), float(result.statistic)
    before, after = float(reference.mean()), float(window.mean())
    detail = f"mean {before:.3g} → {after:.3g}"
    drifted = moved(p_value, distance, limits)
    return Finding(name, "Kolmogorov-Smirnov", p_value, distance, before, after, drifted, detail)


def class_mix(reference: pd.Series, window: pd.Series, limits: Thresholds) -> Finding:
    classes = sorted(set(reference) | set(window))
    mixes = [sample.value_counts().reindex(classes, fill_value=0) for sample in (reference, window)]
    counts = np.array(mixes)  # (2, classes)
    shares = counts / counts.sum(axis=1, keepdims=True)
    gaps = np.abs(shares[1] - shares[0])
    p_value = 1.0 if len(classes) < 2 else float(stats.chi2_contingency(counts).pvalue)
    distance, most = float(gaps.sum() / 2), int(gaps.argmax())
    before, after = float(shares[0, most]), float(shares[1, most])
    detail = f"class {classes[most]}: {before:.1%} → {after:.1%} of predictions"
    drifted = moved(p_value, distance, limits)
    return Finding(CLASS_MIX, "chi-square", p_value, distance, before, after, drifted, detail)


def agreements(window: pd.DataFrame) -> list[Agreement]:
    """Per served model and shadow, in the rows where a shadow scored the image too."""
    shadowed = window.dropna(subset=["shadow_model"])
    same = shadowed["predicted"] == shadowed["shadow_predicted"]
    pairs = same.groupby([shadowed["model"], shadowed["shadow_model"]])
    return [
        Agreement(model, shadow, len(rows), float(rows.mean())) for (model, shadow), rows in pairs
    ]


SERVED, SHADOW = "served", "shadow"


@dataclass(frozen=True)
class ModelVerdict:
    """One model's rows in the window, tested against that model's own reference."""

    model: str  # as the log names it: models:/mnist-lstm/3, or a file
    role: str  # SERVED (it answered) or SHADOW (it scored the same images beside it)
    predictions: int
    reference: str  # where its reference came from, or why it has none
    reference_rows: int  # 0: no reference, no verdict
    findings: list[Finding] = field(default_factory=list)  # empty: no test

    @property
    def tested(self) -> bool:
        return bool(self.findings)

    @property
    def drifted(self) -> list[str]:
        return [finding.name for finding in self.findings if finding.drifted]


@dataclass(frozen=True)
class Verdict:
    """What one look at the log found, model by model."""

    since: datetime.datetime  # UTC
    until: datetime.datetime
    predictions: int  # rows in the window, all models
    min_predictions: int
    thresholds: Thresholds
    models: list[ModelVerdict]  # served ones first, most predictions first
    agreements: list[Agreement] = field(default_factory=list)

    @property
    def tested(self) -> bool:
        return any(model.tested for model in self.models)

    @property
    def drifted(self) -> list[str]:  # each quantity once, in any model's rows
        return list(dict.fromkeys(name for model in self.models for name in model.drifted))

    @property
    def exit_code(self) -> int:
        return 1 if self.drifted else 0
