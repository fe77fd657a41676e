"""The model registry: register a model when it beats the champion, move the `champion` alias.

MLflow is imported inside the functions: the servers name the champion without loading it."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from pipeline.tracking.store import store_lock

if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHAMPION_METRIC = "test_accuracy"


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


def choose_champion(scores: dict[int, float], current: int | None) -> int:
    """The version with the best score; the current champion keeps it on a tie."""
    best = max(scores.values())
    if current in scores and scores[current] >= best:
        return current
    return min(version for version, score in scores.items() if score == best)


def version_scores(client: mlflow.MlflowClient, name: str) -> dict[int, float]:
    """Each registered version's test accuracy, for the versions that have one."""
    scores = {}
    for version in client.search_model_versions(f"name='{name}'"):
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        if CHAMPION_METRIC in metrics:
            scores[int(version.version)] = metrics[CHAMPION_METRIC]
    return scores


def champion_score(client: mlflow.MlflowClient, name: str) -> tuple[int, float] | None:
    """The champion's version and test accuracy, if there is a champion with one."""
    import mlflow

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    score = client.get_run(version.run_id).data.metrics.get(CHAMPION_METRIC)
    return None if score is None else (int(version.version), score)


def register_if_better(name: str, model_uri: str, score: float) -> int | None:
    """Register the model as a new version only if its score beats the champion's.

    For searches and sweeps: the registry keeps the models that were, when made, the best so
    far, not one version per trial. Two that both beat the champion at once both register;
    promote_champion then picks the better.
    """
    import mlflow

    client = mlflow.MlflowClient()
    with store_lock():
        current = champion_score(client, name)
    if current is not None and score <= current[1]:
        log.info(
            "not registered: %s %.4f does not beat %s@%s (version %d, %.4f)",
            CHAMPION_METRIC,
            score,
            name,
            CHAMPION,
            *current,
        )
        return None
    version = int(mlflow.register_model(model_uri, name).version)
    log.info("registered %s version %d (%s %.4f)", name, version, CHAMPION_METRIC, score)
    return version


def promote_champion(name: str, max_rounds: int = 20) -> int | None:
    """Point the `champion` alias at the registered version with the best test accuracy.

    A local SQLite store is locked meanwhile. A server is shared by processes on any machine,
    so after moving the alias the versions are read again, and the choice made again until
    no new score came in: whichever evaluation sets the alias last has seen every version
    scored before it, so the alias ends on the best, whatever the interleaving.
    """
    import mlflow

    client = mlflow.MlflowClient()
    with store_lock():
        scores = version_scores(client, name)
        for _ in range(max_rounds):
            if not scores:
                return None
            try:
                current = int(client.get_model_version_by_alias(name, CHAMPION).version)
            except mlflow.exceptions.MlflowException:
                current = None
            champion = choose_champion(scores, current)
            if champion != current:
                client.set_registered_model_alias(name, CHAMPION, str(champion))
                log.info(
                    "%s@%s is now version %d (%s %.4f)",
                    name,
                    CHAMPION,
                    champion,
                    CHAMPION_METRIC,
                    scores[champion],
                )
            scores, seen = version_scores(client, name), scores
            if scores == seen:
                break
    return champion
