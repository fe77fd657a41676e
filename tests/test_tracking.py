"""Tracking: lineage tags, store set-up under parallel processes."""

import os
import subprocess
import sys

import mlflow
import pytest
import yaml

import pipeline.tracking.lineage as lineage
from pipeline.tracking import store as tracking

from .support import run


def test_mlflow_tracking_uri_overrides_the_repo_store_and_keeps_artifacts_beside_it(
    params, store, tmp_path, monkeypatch
):
    """Not under the working folder, which under `dvc exp run --temp` DVC deletes afterwards."""
    other = tmp_path / "stores" / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    (tmp_path / "workspace").mkdir()
    monkeypatch.chdir(tmp_path / "workspace")
    experiment_id = tracking.use_store(params.mlflow)
    assert other.is_file() and not (store / "mlflow.db").exists()
    experiment = mlflow.MlflowClient(f"sqlite:///{other}").get_experiment(experiment_id)
    assert experiment.name == params.mlflow.experiment
    expected = (other.parent / params.mlflow.artifacts_dir).resolve().as_uri()
    assert experiment.artifact_location == expected


def test_lineage_tags_name_commit_changes_experiment_data_and_params(params, tmp_path, monkeypatch):
    run(["git", "init", "-q"], tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    run(["git", "add", "params.yaml"], tmp_path)
    run(["git", "commit", "-qm", "baseline"], tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "brave-fox")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")

    clean = lineage.lineage_tags({"train": "t" * 64}, params)
    assert clean["git.dirty"] == "false" and clean["git.changed_files"] == ""
    assert clean["dvc.exp_name"] == "brave-fox" and clean["dvc.baseline_rev"] == "abc123"
    assert clean["data.train_sha256"] == "t" * 64
    assert clean["params_sha256"] == lineage.params_sha256(params.model_copy())
    assert clean["params_sha256"] != lineage.params_sha256(params.model_copy(update={"seed": 7}))

    (tmp_path / "params.yaml").write_text("seed: 2\n")
    dirty = lineage.lineage_tags({"train": "t" * 64}, params)
    assert dirty["git.dirty"] == "true" and dirty["git.changed_files"] == "params.yaml"
    assert dirty["git_commit"] == clean["git_commit"]

    # the run's name: the experiment's; for `dvc repro`, the commit and what params.yaml changes
    assert lineage.run_name(clean) == "brave-fox"
    monkeypatch.delenv("DVC_EXP_NAME")
    commit = clean["git_commit"][:7]
    assert lineage.run_name(lineage.lineage_tags({}, params)) == f"{commit} seed=2"
    (tmp_path / "params.yaml").write_text("seed: 1\nserve:\n  port: 5011\n")  # a tool's only
    assert lineage.run_name(lineage.lineage_tags({}, params)) == commit
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "train.py").write_text("")
    run(["git", "add", "pipeline"], tmp_path)  # uncommitted code, beside the params
    (tmp_path / "params.yaml").write_text("seed: 3\n")
    named = lineage.run_name(lineage.lineage_tags({}, params))
    assert named == f"{commit} seed=3 +uncommitted code"
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert lineage.run_name(lineage.lineage_tags({}, params)) == f"{commit} +uncommitted code"
    assert lineage.run_name({}) is None  # outside git: MLflow's own random name


def test_run_name_lists_a_few_changed_params_then_how_many_more(tmp_path, monkeypatch):
    run(["git", "init", "-q"], tmp_path)
    base = {"seed": 1, "model": {"num_units": 128}, "train": {"learning_rate": 0.001}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base))
    run(["git", "add", "params.yaml"], tmp_path)
    run(["git", "commit", "-qm", "baseline"], tmp_path)
    monkeypatch.chdir(tmp_path)
    changed = {
        "seed": 2,
        "model": {"num_units": 64},
        "train": {"learning_rate": 0.002, "iterations": 50},
        "data": {"sources": ["https://mirror.example.org/mnist.npz"]},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed))
    tags = {"git_commit": "74aa655" + "0" * 33, "git.changed_files": "params.yaml"}
    assert (
        lineage.run_name(tags)
        == '74aa655 seed=2 data.sources=["https://mirror.ex… model.num_units=64 +2 more'
    )
    assert lineage.params_changes() == {
        "data.sources": '["https://mirror.example.org/mnist.npz"]',
        "model.num_units": "64",
        "seed": "2",
        "train.learning_rate": "0.002",
        "train.iterations": "50",
    }
    del changed["seed"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed))
    assert lineage.params_changes()["seed"] == lineage.REMOVED


STORE_USER = (
    "import sys, yaml, mlflow\n"
    "from pipeline.params import config\nfrom pipeline.tracking import store as tracking\n"
    "params = config.parse_params(yaml.safe_load(open(sys.argv[1])))\n"
    "experiment = tracking.use_store(params.mlflow)\n"
    "with mlflow.start_run(experiment_id=experiment):\n"
    "    for step in range(40):\n"
    "        mlflow.log_metric('x', step, step=step)\n"
)


@pytest.mark.slow
def test_parallel_processes_set_up_one_new_store_and_share_it_without_locking_errors(
    raw_params, store
):
    """A new SQLite store migrated once under parallel processes, then shared (WAL)."""
    params_file = store / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw_params))
    env = {**os.environ, "DVC_ROOT": str(store)}
    workers = [subprocess.Popen([sys.executable, "-c", STORE_USER, str(params_file)],
                                stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(4)]  # fmt: skip
    errors = [worker.communicate(timeout=180)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0, 0], errors
    assert not any("database is locked" in error for error in errors)
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(raw_params["mlflow"]["experiment"])
    assert len(client.search_runs([experiment.experiment_id])) == 4


def test_runs_left_running_by_a_dead_process_are_marked_killed(params, store):
    import socket

    experiment = tracking.use_store(params.mlflow)
    client = mlflow.MlflowClient()
    finished = subprocess.Popen(["true"])
    finished.wait()
    here = socket.gethostname()
    owners = {
        "dead": {"pipeline.host": here, "pipeline.pid": str(finished.pid)},
        "alive": {"pipeline.host": here, "pipeline.pid": str(os.getpid())},
        "elsewhere": {"pipeline.host": f"not-{here}", "pipeline.pid": str(finished.pid)},
    }
    runs = {
        name: client.create_run(experiment, tags=tags).info.run_id for name, tags in owners.items()
    }
    assert tracking.close_orphaned_runs(experiment) == [runs["dead"]]
    statuses = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert statuses == {"dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}
