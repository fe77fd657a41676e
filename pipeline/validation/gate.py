"""The gate's verdict: each floor, check and the gain judged by MLflow's MetricThreshold.

Each check is validated on its own (`mlflow.validate_evaluation_results` with one threshold),
so the verdict names every failed check with its value and threshold, not only the first.
MLflow is imported inside the functions, as evaluate loads it anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pipeline.params.config as config
from pipeline.tracking.registry import FAILED, FAILED_TAG, PASSED, STATUS_TAG

GAIN = "gain"  # the check against the champion; the others are the floors and behaviour


@dataclass(frozen=True)
class Check:
    """One check of the gate: the metric it reads, its value, the rule, the outcome."""

    name: str
    metric: str
    value: float
    rule: str  # ">= 0.95", "<= 0.15", ">= champion 0.9812 + 0.001"
    passed: bool

    @property
    def outcome(self) -> str:
        """A release check passes or FAILS; the gain is had or not, which fails nothing: a
        version without it is still a valid model (the challenger)."""
        if self.name == GAIN:
            return "gain" if self.passed else "no gain"
        return "passed" if self.passed else "FAILED"

    @property
    def failed(self) -> bool:
        """A release check that did not pass (no gain is not a failure)."""
        return not self.passed and self.name != GAIN

    def line(self) -> str:
        return f"{self.name}: {self.metric} = {self.value:.4f}, needs {self.rule}: {self.outcome}"


def judged(name: str, metric: str, value: float, threshold, baseline: float | None = None):
    """A Check of `value` against one MetricThreshold (and a baseline for a gain), by MLflow."""
    import mlflow
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    def result(metrics: dict[str, float]) -> EvaluationResult:
        return EvaluationResult(metrics=metrics, artifacts={})

    logging.getLogger(ModelValidationFailedException.__module__).setLevel(logging.WARNING)
    baseline_result = None if baseline is None else result({metric: baseline})
    try:
        mlflow.validate_evaluation_results(
            {metric: threshold}, result({metric: value}), baseline_result
        )
        passed = True
    except ModelValidationFailedException:
        passed = False
    return Check(name, metric, value, rule_of(threshold, baseline), passed)


def rule_of(threshold, baseline: float | None) -> str:
    sign = ">=" if threshold.greater_is_better else "<="
    if threshold.min_absolute_change is None:
        return f"{sign} {threshold.threshold:g}"
    step = "+" if threshold.greater_is_better else "-"
    return f"{sign} champion {baseline:.4f} {step} {threshold.min_absolute_change:g}"


def release_checks(metrics: dict[str, float], gate: config.EvaluateParams) -> list[Check]:
    """The floors (test accuracy, the worst class's F1) and the behavioural checks."""
    from mlflow.models import MetricThreshold

    def floor(value: float) -> MetricThreshold:
        return MetricThreshold(threshold=value, greater_is_better=True)

    rules = [
        ("test accuracy floor", "test_accuracy", floor(gate.min_test_accuracy)),
        ("class F1 floor", "test_min_class_f1", floor(gate.min_class_f1)),
        ("shift invariance", "shift_agreement", floor(gate.min_shift_agreement)),
        (
            "noise robustness",
            "noise_accuracy_drop",
            MetricThreshold(threshold=gate.max_noise_drop, greater_is_better=False),
        ),
    ]
    return [judged(name, metric, metrics[metric], rule) for name, metric, rule in rules]


def gain_check(candidate: float, champion: float, min_gain: float) -> Check:
    """Validation accuracy over the champion's, both on the same images, by at least min_gain.
    A champion that could not be scored (-inf) is not beaten: no paired comparison, no move."""
    from mlflow.models import MetricThreshold

    if champion == float("-inf"):
        rule = "a champion scored on the same images (it could not be loaded)"
        return Check(GAIN, "validation_accuracy", candidate, rule, passed=False)
    threshold = MetricThreshold(min_absolute_change=min_gain, greater_is_better=True)
    return judged(GAIN, "validation_accuracy", candidate, threshold, baseline=champion)


def beats(min_gain: float) -> Callable[[float, float], bool]:
    """The gain check as a rule for ranking versions: (a score, the champion's) → passed?"""

    def rule(score: float, champion: float) -> bool:
        return gain_check(score, champion, min_gain).passed

    return rule


def status(checks: list[Check]) -> str:
    return PASSED if all(check.passed for check in checks) else FAILED


def tags(release: list[Check], gain: Check | None) -> dict[str, str]:
    """The verdict as tags for the run and the model version: the status of the release checks,
    each check's line under `validation.<metric>`, the gain's outcome where there was one."""
    failed = [check.metric for check in release if not check.passed]
    values = {STATUS_TAG: status(release), FAILED_TAG: ", ".join(failed) or "none"}
    values |= {f"validation.{check.metric}": check.line() for check in release}
    if gain is not None:
        values["validation.gain"] = gain.line()
    return values
