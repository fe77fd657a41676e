"""A model URI becomes a local folder once per store state: MLflow asked only after a write."""

import contextlib
import logging
import shutil
import sqlite3

import pytest

from pipeline.inference import cache as model_cache
from pipeline.tracking import registry

pytestmark = pytest.mark.slow


def resolve(trained, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=model_cache.__name__):
        champion = registry.champion_uri(trained.params.mlflow.registered_model)
        _, folder, _ = model_cache.resolve(champion, trained.params)
    assert (folder / "MLmodel").is_file()
    return caplog.text


def test_the_answer_is_reused_until_the_store_or_the_copy_changes(
    trained, trained_store, tmp_path, caplog
):
    name = trained.params.mlflow.registered_model
    first = resolve(trained, caplog)
    assert f"{name}/1" in first and "unchanged" not in first
    again = resolve(trained, caplog)
    assert f"{name}/1" in again and "store unchanged" in again
    shutil.rmtree(tmp_path / model_cache.CACHE_DIR / "models")  # deleted by hand
    assert "unchanged" not in resolve(trained, caplog)  # made again
    # a second version, made the champion as the UI or evaluate would: the next start sees it
    first_version = trained_store.get_model_version(name, "1")
    version = trained_store.create_model_version(
        name, first_version.source, first_version.run_id
    ).version
    trained_store.set_registered_model_alias(name, "champion", version)
    moved = resolve(trained, caplog)
    assert f"{name}/{version}" in moved and "unchanged" not in moved
    with pytest.raises(model_cache.ModelError, match="cannot load model models:/nope@champion"):
        model_cache.resolve("models:/nope@champion", trained.params)


def test_a_sqlite_store_has_a_state_a_write_changes_a_settled_close_does_not_a_server_none(
    tmp_path,
):
    """After `settle`, SQLite's checkpoint on the last close changes no recorded state."""
    assert model_cache.store_state("http://127.0.0.1:5000") is None
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
    assert recorded and model_cache.store_state(store) == recorded
    with contextlib.closing(sqlite3.connect(database)) as writer:
        writer.execute("insert into t values (1)")
        writer.commit()
        assert model_cache.store_state(store) != recorded
