"""A model URI becomes a local folder once per store state: MLflow asked only after a write."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
import urllib.request
from pathlib import Path

import mlflow
import pytest

from pipeline.inference import cache as model_cache
from pipeline.tracking import registry

from .support import copy_store, run, running, tiny_repo, use_store_at

pytestmark = pytest.mark.slow


@pytest.fixture
def own_store(trained, tmp_path, monkeypatch):
    """A copy of the trained store and a cache folder of this test's own."""
    database = copy_store(trained.root / "mlflow.db", tmp_path / "mlflow.db")
    use_store_at(tmp_path, monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    return database


def resolve(trained, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=model_cache.__name__):
        champion = registry.champion_uri(trained.params.mlflow.registered_model)
        _, folder, _ = model_cache.resolve(champion, trained.params)
    assert (folder / "MLmodel").is_file()
    return caplog.text


def test_the_answer_is_reused_until_the_store_or_the_copy_changes(trained, own_store, caplog):
    name = trained.params.mlflow.registered_model
    first = resolve(trained, caplog)
    assert f"{name}/1" in first and "unchanged" not in first
    again = resolve(trained, caplog)
    assert f"{name}/1" in again and "store unchanged" in again
    shutil.rmtree(own_store.parent / model_cache.CACHE_DIR / "models")  # deleted by hand
    assert "unchanged" not in resolve(trained, caplog)  # made again
    # a second version, made the champion as the UI or evaluate would: the next start sees it
    uri = f"sqlite:///{own_store}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    first_version = client.get_model_version(name, "1")
    version = client.create_model_version(name, first_version.source, first_version.run_id).version
    client.set_registered_model_alias(name, "champion", version)
    moved = resolve(trained, caplog)
    assert f"{name}/{version}" in moved and "unchanged" not in moved
    with pytest.raises(model_cache.ModelError, match="cannot load model models:/nope@champion"):
        model_cache.resolve("models:/nope@champion", trained.params)


def test_a_server_store_has_no_state_and_a_sqlite_file_has_one(tmp_path):
    assert model_cache.store_state("http://127.0.0.1:5000") is None
    database = tmp_path / "store.db"
    with sqlite3.connect(database) as connection:
        connection.execute("create table t (x)")
    before = model_cache.store_state(f"sqlite:///{database}")
    with sqlite3.connect(database) as connection:
        connection.execute("insert into t values (1)")
    assert before and model_cache.store_state(f"sqlite:///{database}") != before


def test_a_reader_closing_the_store_leaves_the_state_recorded_after_a_checkpoint(tmp_path):
    """After `settle`, SQLite's checkpoint on the last close changes no recorded state."""
    database = tmp_path / "store.db"
    store = f"sqlite:///{database}"
    writer = sqlite3.connect(database)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("create table t (x)")
    writer.commit()  # in the log, not yet in the database file
    model_cache.settle(store)
    recorded = model_cache.store_state(store)
    writer.close()  # the last connection
    with contextlib.closing(sqlite3.connect(database)) as reader:
        assert reader.execute("select count(*) from t").fetchone() == (0,)
    assert model_cache.store_state(store) == recorded
    with contextlib.closing(sqlite3.connect(database)) as writer:
        writer.execute("insert into t values (1)")
        writer.commit()
        assert model_cache.store_state(store) != recorded


def test_the_first_server_start_after_dvc_repro_asks_no_mlflow(tmp_path):
    """After `dvc repro`, the next `make serve` resolves the champion without MLflow."""
    repo = tiny_repo(tmp_path)
    run(["dvc", "repro"], repo)
    with contextlib.closing(sqlite3.connect(repo / "mlflow.db")) as reader:  # as `make ui` would
        assert reader.execute("select count(*) from runs").fetchone() == (1,)
    log = tmp_path / "server.log"
    args = ["--params", str(repo / "params.yaml")]
    with running("pipeline.serving.serve", args, "/ping", log, {"DVC_ROOT": str(repo)}) as server:
        with urllib.request.urlopen(server.url + "/version", timeout=10) as response:
            serving = json.loads(response.read())
    assert "models:/mnist-lstm@champion is models:/mnist-lstm/1 (store unchanged)" in (
        log.read_text()
    ), log.read_text()
    assert serving["pinned"] == "models:/mnist-lstm/1"
    assert Path(serving["path"]).is_relative_to(repo / model_cache.CACHE_DIR)
