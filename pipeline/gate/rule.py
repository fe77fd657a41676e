"""The champion rule: the release checks, the gain, the decision, and the aliases it moves.

A version passes the release checks (floors, behaviour), then needs a gain of `evaluate.min_gain`
in validation accuracy over the champion, both scored on this run's images (docs/gate.md).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

import pipeline.params.config as config
import pipeline.tracking.registry as registry
from pipeline.inference.integrity import HASH_TAG, ModelError
from pipeline.tracking.registry import CHAMPION, alias_version, tag_version, version_tags
from pipeline.tracking.store import store_lock

if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)

# The newest version, other than the champion, that passed the release checks (to shadow, or
# to roll back to); set again after every move of the champion.
CHALLENGER = "challenger"
STATUS_TAG = "validation.status"  # a version's gate verdict: PASSED or FAILED
PASSED, FAILED = "passed", "failed"
FAILED_TAG = "validation.failed"  # the failed checks' metrics, comma-separated, or "none"
# When a version passed the whole gate, gain included (Unix seconds): those contend for champion.
PASSED_AT_TAG = "validation.passed_at"
PROMOTED_AT_TAG = "champion.promoted_at"  # when it last became champion
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
        """A release check passes or FAILS; the gain is had or not (no gain fails nothing)."""
        if self.name == GAIN:
            return "gain" if self.passed else "no gain"
        return "passed" if self.passed else "FAILED"

    @property
    def failed(self) -> bool:
        return not self.passed and self.name != GAIN

    def line(self) -> str:
        return f"{self.name}: {self.metric} = {self.value:.4f}, needs {self.rule}: {self.outcome}"


def release_checks(metrics: dict[str, float], gate: config.EvaluateParams) -> list[Check]:
    """The floors (test accuracy, the worst class's F1) and the behavioural checks."""
    floors = [
        ("test accuracy floor", "test_accuracy", gate.min_test_accuracy),
        ("class F1 floor", "test_min_class_f1", gate.min_class_f1),
        ("shift invariance", "shift_agreement", gate.min_shift_agreement),
    ]
    checks = [Check(n, m, metrics[m], f">= {t:g}", bool(metrics[m] >= t)) for n, m, t in floors]
    drop, most = metrics["noise_accuracy_drop"], gate.max_noise_drop  # lower is better
    noise = Check("noise robustness", "noise_accuracy_drop", drop, f"<= {most:g}", drop <= most)
    return [*checks, noise]


def gain_check(candidate: float, champion: float, min_gain: float) -> Check:
    """Validation accuracy over the champion's (-inf: it could not be scored, so not beaten)."""
    rule = f">= champion {champion:.4f} + {min_gain:g}"
    if champion == float("-inf"):
        rule = "a champion scored on the same images (it could not be loaded)"
    passed = champion > float("-inf") and candidate >= champion + min_gain
    return Check(GAIN, "validation_accuracy", candidate, rule, bool(passed))


Beats = Callable[[float, float], bool]  # (a score, the champion's) → does it beat the champion?


def beats(min_gain: float) -> Beats:
    """The gain check as a rule for ranking versions."""
    return lambda score, champion: gain_check(score, champion, min_gain).passed


def overall(checks: list[Check]) -> str:
    return PASSED if all(check.passed for check in checks) else FAILED


def tags(release: list[Check], gain: Check | None) -> dict[str, str]:
    """The verdict as tags for the run and the version: the status, each check's line."""
    failed = [check.metric for check in release if not check.passed]
    values = {STATUS_TAG: overall(release), FAILED_TAG: ", ".join(failed) or "none"}
    values |= {f"validation.{check.metric}": check.line() for check in release}
    if gain is not None:
        values[f"validation.{GAIN}"] = gain.line()
    return values


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on this model and what became of the aliases."""

    release: list[Check]  # floors and behavioural checks
    gain: Check | None  # against the champion before; None when there was none
    version: int | None  # the registered version (None: `registration: better` and not good)
    champion: int | None  # the champion afterwards
    champion_before: int | None

    @property
    def status(self) -> str:
        return overall(self.release)

    @property
    def checks(self) -> list[Check]:
        return self.release + ([self.gain] if self.gain else [])

    def became(self) -> str:
        """One sentence on what the verdict did to the aliases (for the model card)."""
        before = "none" if self.champion_before is None else f"version {self.champion_before}"
        stays = f"the champion stays {before}."
        if self.version is None:
            return f"Not registered (`mlflow.registration: better`); {stays}"
        if self.status == FAILED:
            return f"Never champion: it failed a release check; {stays}"
        if self.champion == self.version:
            return f"It became `{CHAMPION}` (before: {before})."
        no_gain = f"It passed the release checks but had no gain: `{CHALLENGER}`"
        return f"{no_gain}; the champion is version {self.champion}."

    def verdict_line(self) -> str:
        """The verdict as one sentence: the release checks, the gain, what it became."""
        failed = ", ".join(check.metric for check in self.release if check.failed)
        head = f"release checks FAILED ({failed})" if failed else "release checks passed"
        if gain := self.gain:
            had = "a gain" if gain.passed else "no gain"
            head += f"; {had} over champion v{self.champion_before} ({gain.metric} "
            head += f"{gain.value:.4f}, needs {gain.rule})"
        elif self.status == PASSED and self.champion_before is not None:
            head += f"; it is champion v{self.champion_before} already: no gain to have"
        if self.version is None:
            return head + ": not registered (mlflow.registration: better)"
        if self.champion == self.version:
            return head + f": champion (version {self.version})"
        became = "never champion" if self.status == FAILED else CHALLENGER
        return head + f": {became} (version {self.version}; champion v{self.champion})"


def version_score(name: str, val: dict[str, np.ndarray], version: int) -> float:
    """A version's accuracy on this run's validation images; -inf if it cannot be loaded."""
    import mlflow

    uri = f"models:/{name}/{version}"
    try:
        registered = mlflow.MlflowClient().get_model_version(name, str(version))
        probabilities = registry.load_model(uri, registered.tags.get(HASH_TAG))(val["x"])
    except (mlflow.exceptions.MlflowException, ModelError) as error:
        log.warning("cannot score %s: %s", uri, str(error).splitlines()[0])
        return float("-inf")
    score = float((probabilities.argmax(axis=1) == val["y"]).mean())
    log.info("version %d: validation accuracy %.4f on this run's images", version, score)
    return score


def decide(
    run_info: dict, metrics: dict[str, float], val: dict[str, np.ndarray], params: config.Params
) -> Decision:
    """Judge the model in train's active run; register, tag and move the aliases it earned."""
    import mlflow

    name, gate = params.mlflow.registered_model, params.evaluate
    client = mlflow.MlflowClient()
    registered = run_info["registered_version"]  # a string from a tracking server
    version = None if registered is None else int(registered)
    release = release_checks(metrics, gate)
    before = alias_version(client, name, CHAMPION)

    @functools.cache  # each version scored once; this model's score is its own (read on call)
    def scorer(other: int) -> float:
        if other == version:
            return metrics["validation_accuracy"]
        return version_score(name, val, other)

    gain = None  # none to gain over: no champion yet, or this model is it (judged again)
    if overall(release) == PASSED and before not in (None, version):
        gain = gain_check(metrics["validation_accuracy"], scorer(before), gate.min_gain)
        if scorer(before) > float("-inf"):
            mlflow.log_metric("champion_validation_accuracy", scorer(before))
    contends = overall(release) == PASSED and (gain is None or gain.passed)
    if params.mlflow.registration == "better":  # train logged the model, unregistered
        onnx_sha256 = run_info.get("onnx_sha256")
        version = registry.register(name, run_info["model_uri"], onnx_sha256) if contends else None
    verdict = tags(release, gain)
    mlflow.set_tags(verdict | {"validation.version": str(version or "not registered")})
    if version is None:
        return Decision(release, gain, None, before, before)
    passed_at = {PASSED_AT_TAG: f"{time.time():.3f}"} if contends else {}
    tag_version(client, name, version, verdict | passed_at)
    champion = before
    if contends:
        champion = settle_champion(name, version, scorer, beats(gate.min_gain))
    settle_challenger(client, name)
    return Decision(release, gain, version, champion, before)


def set_alias(client: mlflow.MlflowClient, name: str, alias: str, version: int) -> None:
    client.set_registered_model_alias(name, alias, str(version))
    if alias == CHAMPION:
        tag_version(client, name, version, {PROMOTED_AT_TAG: f"{time.time():.3f}"})


def passed_since(client: mlflow.MlflowClient, name: str, since: float) -> set[int]:
    """Versions that passed the whole gate at or after `since` (a concurrent evaluation's)."""
    versions = client.search_model_versions(f"name='{name}'")
    passed = [(int(v.version), (v.tags or {}).get(PASSED_AT_TAG)) for v in versions]
    return {version for version, at in passed if at is not None and float(at) >= since}


def choose_champion(scores: dict[int, float], current: int | None, beats: Beats) -> int:
    """The current champion unless another beats it, else the best that does (lowest on a tie)."""
    if current in scores:
        scores = {v: s for v, s in scores.items() if v == current or beats(s, scores[current])}
    best = max(scores.values())
    if current in scores and scores[current] >= best:
        return current
    return min(version for version, score in scores.items() if score == best)


def settle_champion(
    name: str, candidate: int, score: Callable[[int], float], beats: Beats, max_rounds: int = 20
) -> int:
    """Make `candidate` champion if it beats the champion on `score`; the champion afterwards.

    On a tracking server another evaluation may move the alias between this one's read and
    its write (a SQLite store is locked): so the alias and the versions that passed since the
    champion was promoted are read again and the choice made again until nothing new came in.
    """
    import mlflow

    client = mlflow.MlflowClient()
    with store_lock():
        first = alias_version(client, name, CHAMPION)
        tags = {} if first is None else version_tags(client, name, first)
        since = float(tags.get(PROMOTED_AT_TAG, 0))
        seen: set[int] = set()
        for _ in range(max_rounds):
            current = alias_version(client, name, CHAMPION)
            rivals = passed_since(client, name, since) | {candidate}
            rivals |= set() if current is None else {current}
            champion = choose_champion({v: score(v) for v in rivals}, current, beats)
            if champion != current:
                set_alias(client, name, CHAMPION, champion)
                log.info("%s@%s is now version %d", name, CHAMPION, champion)
            if rivals == seen and alias_version(client, name, CHAMPION) == champion:
                break
            seen = rivals
    return champion


def settle_challenger(client: mlflow.MlflowClient, name: str) -> int | None:
    """Point `challenger` at the newest version, not champion, that passed the release checks."""
    champion = alias_version(client, name, CHAMPION)
    passed = [
        int(version.version)
        for version in client.search_model_versions(f"name='{name}'")
        if (version.tags or {}).get(STATUS_TAG) == PASSED and int(version.version) != champion
    ]
    newest = max(passed, default=None)
    current = alias_version(client, name, CHALLENGER)
    if newest == current:
        return current
    if newest is None:
        client.delete_registered_model_alias(name, CHALLENGER)
        log.info("%s@%s points at no version now", name, CHALLENGER)
    else:
        set_alias(client, name, CHALLENGER, newest)
        log.info("%s@%s is now version %d", name, CHALLENGER, newest)
    return newest


class PromotionError(Exception):
    """`make promote` cannot move the alias as asked; the message says why."""


def promote(name: str, version: int, reason: str, who: str, force: bool = False) -> int | None:
    """Point `champion` at `version` by hand, recording who and why; the champion before."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        tags = version_tags(client, name, version)
    except mlflow.exceptions.MlflowException:
        raise PromotionError(f"{name} has no version {version}") from None
    verdict = tags.get(STATUS_TAG)
    if verdict != PASSED and not force:
        why = f"failed the gate ({tags.get(FAILED_TAG)})" if verdict == FAILED else "has no verdict"
        raise PromotionError(f"version {version} {why}: give FORCE=1 to promote it anyway")
    with store_lock():
        before = alias_version(client, name, CHAMPION)
        set_alias(client, name, CHAMPION, version)
        record = {"by": who, "reason": reason, "previous": before or "none", "forced": force}
        tag_version(client, name, version, {f"champion.{k}": v for k, v in record.items()})
        settle_challenger(client, name)
    return before
