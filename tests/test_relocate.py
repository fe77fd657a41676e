"""A moved clone's SQLite store: refused with the fix named, then fixed by `make relocate`."""

import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import yaml

from pipeline.tools import relocate
from pipeline.tracking import store as tracking

from .support import copy_store, use_store_at


@pytest.fixture
def moved(trained, tmp_path, monkeypatch):
    """The trained repo copied, relocated, then moved: nothing left where its store points."""
    before = tmp_path / "before"
    shutil.copytree(trained.root, before, ignore=shutil.ignore_patterns("mlflow.db*"))
    copy_store(trained.root / "mlflow.db", before / "mlflow.db")
    (tmp_path / "before" / "params.yaml").write_text(yaml.safe_dump(trained.params.model_dump()))
    relocate.relocate(tmp_path / "before" / "mlflow.db", trained.params.mlflow, tmp_path / "before")
    shutil.move(tmp_path / "before", tmp_path / "after")
    return use_store_at(tmp_path / "after", monkeypatch)


def test_a_moved_store_is_refused_and_make_relocate_makes_runs_and_models_load_from_it(
    moved, trained, monkeypatch
):
    with pytest.raises(tracking.TrackingError, match=r"moved or copied; run `make relocate`"):
        tracking.use_store(trained.params.mlflow, moved)
    command = [sys.executable, "-m", "pipeline.tools.relocate", "--params", "params.yaml"]
    result = subprocess.run(command, cwd=moved, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "model_versions.storage_location: 1 rows" in result.stderr
    tracking.use_store(trained.params.mlflow, moved)  # no longer refused
    uri = f"sqlite:///{moved / 'mlflow.db'}"  # set through monkeypatch: restored afterwards
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, uri)
    model = mlflow.pyfunc.load_model("models:/mnist-lstm/1")
    images = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    assert model.predict(images).shape == (3, trained.params.model.n_classes)
    run = mlflow.MlflowClient().get_run(trained.run_id)
    assert run.info.artifact_uri.startswith(moved.as_uri() + "/")
    assert mlflow.artifacts.list_artifacts(run_id=trained.run_id)  # the files are found


def test_relocate_twice_changes_nothing_and_a_missing_store_is_one_line(moved, trained, tmp_path):
    database = moved / "mlflow.db"
    assert relocate.relocate(database, trained.params.mlflow, moved)["runs.artifact_uri"] == 1
    assert relocate.relocate(database, trained.params.mlflow, moved) == {}
    with pytest.raises(relocate.RelocateError, match="no MLflow store at"):
        relocate.relocate(tmp_path / "none.db", trained.params.mlflow, tmp_path)
