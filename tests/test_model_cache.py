"""A model URI becomes a local folder once per store state: MLflow asked only after a write."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import mlflow
import pytest

from pipeline.model import cache as model_cache
from pipeline.serving import loader

from .conftest import use_store_at

pytestmark = pytest.mark.slow


@pytest.fixture
def own_store(trained, tmp_path, monkeypatch):
    """A copy of the trained pipeline's store (its artifacts stay where they are) and a repo
    folder for the cache, so that moving the alias here leaves the shared fixture alone."""
    database = tmp_path / "mlflow.db"
    with sqlite3.connect(trained.root / "mlflow.db") as source, sqlite3.connect(database) as copy:
        source.backup(copy)
    use_store_at(tmp_path, monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    return database


def resolve(trained, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=model_cache.__name__):
        folder = model_cache.local_folder(loader.default_uri(trained.params), trained.params)
    assert (folder / "MLmodel").is_file()
    return caplog.text


def test_the_answer_is_reused_until_the_store_changes(trained, own_store, caplog):
    name = trained.params.mlflow.registered_model
    first = resolve(trained, caplog)
    assert f"{name}/1" in first and "unchanged" not in first
    again = resolve(trained, caplog)
    assert f"{name}/1" in again and "store unchanged" in again
    # a second version, made the champion as the UI or evaluate would: the next start sees it
    uri = f"sqlite:///{own_store}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    first_version = client.get_model_version(name, "1")
    version = client.create_model_version(name, first_version.source, first_version.run_id).version
    client.set_registered_model_alias(name, "champion", version)
    moved = resolve(trained, caplog)
    assert f"{name}/{version}" in moved and "unchanged" not in moved


def test_a_copy_deleted_by_hand_is_made_again(trained, own_store, caplog):
    resolve(trained, caplog)
    shutil.rmtree(own_store.parent / model_cache.CACHE_DIR / "models")
    assert "unchanged" not in resolve(trained, caplog)


def test_a_missing_alias_is_one_line(trained, own_store):
    with pytest.raises(model_cache.ModelError, match="cannot load model models:/nope@champion"):
        model_cache.local_folder("models:/nope@champion", trained.params)


def test_a_server_store_has_no_state_and_a_sqlite_file_has_one(tmp_path):
    assert model_cache.store_state("http://127.0.0.1:5000") is None
    database = tmp_path / "store.db"
    with sqlite3.connect(database) as connection:
        connection.execute("create table t (x)")
    before = model_cache.store_state(f"sqlite:///{database}")
    with sqlite3.connect(database) as connection:
        connection.execute("insert into t values (1)")
    assert before and model_cache.store_state(f"sqlite:///{database}") != before


def test_evaluate_leaves_the_champion_copied_for_the_servers(trained):
    answers = json.loads((trained.root / model_cache.CACHE_DIR / model_cache.ANSWERS).read_text())
    name = trained.params.mlflow.registered_model
    champion = trained.client().get_model_version_by_alias(name, "champion").version
    [answer] = [value for key, value in answers.items() if key.endswith(f"models:/{name}@champion")]
    assert answer["pinned"] == f"models:/{name}/{champion}"
    assert (Path(answer["path"]) / "MLmodel").is_file() and answer["state"]
