"""Whether a reproduction came out the same as the run it rebuilt, and if not, what differs:
bit-identical, reproduced within tolerance or not reproduced (docs/reliability.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.tracking.lineage import ENV_PREFIX, WEIGHTS_TAG

BIT_IDENTICAL = "bit-identical"
WITHIN_TOLERANCE = "reproduced within tolerance"
NOT_REPRODUCED = "not reproduced"
EXIT_CODES = {BIT_IDENTICAL: 0, WITHIN_TOLERANCE: 3, NOT_REPRODUCED: 4}
# 0.005 is 50 of the 10,000 test images; the loss bound is of the same order relative to a
# loss near 0.07. Both far exceed what summation order changes, far below what a bug costs.
ACCURACY_TOLERANCE = 0.005
LOSS_TOLERANCE = 0.02
# Tags whose values shape the result besides code and params: compared, and listed if they differ.
SHAPING_PREFIXES = (ENV_PREFIX, "tensorflow.", "data.", "params_sha256")


@dataclass(frozen=True)
class RunRecord:
    """What is compared of a run: its tags and metrics."""

    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class Reproduction:
    """What came out of a reproduction: one of the three verdicts and what differs."""

    kind: str
    differences: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]


def metric_differences(original: RunRecord, again: RunRecord) -> list[str]:
    before, after = (
        {key: value for key, value in record.metrics.items() if key.startswith("test_")}
        for record in (original, again)
    )
    lines = [
        f"{key}: {before[key]!r} → {after[key]!r}"
        for key in sorted(before.keys() & after.keys())
        if before[key] != after[key]
    ]
    lines += [f"{key}: only in the original run" for key in sorted(before.keys() - after.keys())]
    return lines


def tag_differences(original: RunRecord, again: RunRecord) -> list[str]:
    before, after = (
        {key: value for key, value in record.tags.items() if key.startswith(SHAPING_PREFIXES)}
        for record in (original, again)
    )
    return [
        f"{key}: {before.get(key, 'not recorded')} → {after.get(key, 'not recorded')}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def within_tolerance(original: RunRecord, again: RunRecord) -> bool:
    pairs = (("test_accuracy", ACCURACY_TOLERANCE), ("test_loss", LOSS_TOLERANCE))
    return all(
        key in original.metrics
        and key in again.metrics
        and abs(original.metrics[key] - again.metrics[key]) <= tolerance
        for key, tolerance in pairs
    )


def compare(original: RunRecord, again: RunRecord) -> Reproduction:
    """Compare a reproduction with the run it rebuilt."""
    weights = original.tags.get(WEIGHTS_TAG)
    same_weights = weights is not None and weights == again.tags.get(WEIGHTS_TAG)
    metrics = metric_differences(original, again)
    if same_weights and not metrics:
        return Reproduction(BIT_IDENTICAL)
    differences = metrics + tag_differences(original, again)
    if weights is None:
        differences.append(f"the original run recorded no {WEIGHTS_TAG}: weights not compared")
    elif not same_weights:
        differences.append("weights: other bytes")
    kind = WITHIN_TOLERANCE if within_tolerance(original, again) else NOT_REPRODUCED
    return Reproduction(kind, differences)
