"""The model registry: the `champion` and `challenger` aliases, moved by the gate or by hand.

A version becomes champion only through evaluate's gate (pipeline/validation/) or `make
promote`; the verdicts live as tags on the versions. MLflow is imported inside the functions:
the servers name the champion without loading it."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.tracking.store import store_lock

if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)

CHAMPION = "champion"
# The newest version, other than the champion, that passed the release checks: the one to
# shadow, or to roll back to. Set again after every move of the champion (settle_challenger).
CHALLENGER = "challenger"
STATUS_TAG = "validation.status"  # a version's gate verdict: PASSED or FAILED
PASSED, FAILED = "passed", "failed"
FAILED_TAG = "validation.failed"  # the failed checks' metrics, comma-separated, or "none"
# When a version passed the whole gate, the gain over the champion included (seconds since the
# epoch): the versions that contend for champion. One that passed all but the gain has none.
PASSED_AT_TAG = "validation.passed_at"
PROMOTED_AT_TAG = "champion.promoted_at"  # when it last became champion


# A registered model's URI: models:/NAME/VERSION or models:/NAME@ALIAS (models:/m-<id> is a
# logged model, not a registered one).
REGISTERED_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def registered_version(client: mlflow.MlflowClient, uri: str):
    """The registered version a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI names (an
    alias resolved now); None for any other URI. MLflow's exception when there is no such."""
    match = REGISTERED_URI.match(uri)
    if match is None:
        return None
    if match["version"]:
        return client.get_model_version(match["name"], match["version"])
    return client.get_model_version_by_alias(match["name"], match["alias"])


def alias_version(client: mlflow.MlflowClient, name: str, alias: str) -> int | None:
    """The version an alias points at, None when it points nowhere (or there is no model)."""
    import mlflow

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def version_tags(client: mlflow.MlflowClient, name: str, version: int) -> dict[str, str]:
    return dict(client.get_model_version(name, str(version)).tags)


def tag_version(client: mlflow.MlflowClient, name: str, version: int, tags: dict) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def set_alias(client: mlflow.MlflowClient, name: str, alias: str, version: int) -> None:
    client.set_registered_model_alias(name, alias, str(version))
    if alias == CHAMPION:
        tag_version(client, name, version, {PROMOTED_AT_TAG: f"{time.time():.3f}"})


def passed_since(client: mlflow.MlflowClient, name: str, since: float) -> set[int]:
    """Versions that passed the whole gate at or after `since`: the ones a concurrent
    evaluation may have promoted while this one compared with an older champion."""
    found = set()
    for version in client.search_model_versions(f"name='{name}'"):
        passed_at = (version.tags or {}).get(PASSED_AT_TAG)
        if passed_at is not None and float(passed_at) >= since:
            found.add(int(version.version))
    return found


Beats = Callable[[float, float], bool]  # (a score, the champion's) → does it beat the champion?


def choose_champion(scores: dict[int, float], current: int | None, beats: Beats) -> int:
    """The champion among scored versions: the current one unless another beats it, else the
    best of those that do (the lowest version on a tie)."""
    if current in scores:
        scores = {v: s for v, s in scores.items() if v == current or beats(s, scores[current])}
    best = max(scores.values())
    if current in scores and scores[current] >= best:
        return current
    return min(version for version, score in scores.items() if score == best)


def settle_champion(
    name: str, candidate: int, score: Callable[[int], float], beats: Beats, max_rounds: int = 20
) -> int:
    """Make `candidate` (which passed the release checks) champion if it beats the champion on
    `score` (this run's validation images); the champion's version afterwards.

    A local SQLite store is locked meanwhile. A server is shared by processes on any machine:
    another evaluation may move the alias between this one's read and its write. So after
    writing, the alias and the versions that passed since the champion first read was promoted
    are read again, each scored on this run's images too, and the choice made again until
    nothing new came in: whichever evaluation writes last has compared every rival before it.
    A champion promoted by hand is compared only with versions that passed after it was.
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
    """Point `challenger` at the newest version that passed the release checks and is not the
    champion, or at none; the version it points at. Called after the champion moves, by the
    gate or by hand, so the alias keeps its one meaning through promotions and rollbacks."""
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


def register(name: str, model_uri: str) -> int:
    """A logged model as a new version of `name` (for `registration: better`, once it passed)."""
    import mlflow

    version = int(mlflow.register_model(model_uri, name).version)
    log.info("registered %s version %d", name, version)
    return version


class PromotionError(Exception):
    """`make promote` cannot move the alias as asked; the message says why."""


def promote(name: str, version: int, reason: str, who: str, force: bool = False) -> int | None:
    """Point `champion` at `version` by hand (a rollback too), recording who, why and what it
    replaced as version tags; the champion before. A version that did not pass the gate is
    refused unless `force`."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        tags = version_tags(client, name, version)
    except mlflow.exceptions.MlflowException:
        raise PromotionError(f"{name} has no version {version}") from None
    verdict = tags.get(STATUS_TAG, "no verdict")
    if verdict != PASSED and not force:
        failed = tags.get(FAILED_TAG)
        raise PromotionError(
            f"version {version} {verdict if verdict == 'no verdict' else 'failed the gate'}"
            + (f" ({failed})" if failed and verdict == FAILED else "")
            + ": give FORCE=1 to promote it anyway"
        )
    with store_lock():
        before = alias_version(client, name, CHAMPION)
        set_alias(client, name, CHAMPION, version)
        record = {"by": who, "reason": reason, "previous": before or "none", "forced": force}
        tag_version(client, name, version, {f"champion.{k}": v for k, v in record.items()})
        settle_challenger(client, name)
    return before
