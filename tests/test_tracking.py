"""Tracking: lineage tags, store set-up under parallel processes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import mlflow
import pytest
import yaml

import pipeline.tracking.lineage as lineage
from pipeline.params import config
from pipeline.tracking import store as tracking

from .support import GIT_IDENTITY


def test_mlflow_tracking_uri_overrides_the_repo_store(params, store, monkeypatch):
    other = store / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    experiment_id = tracking.use_store(params.mlflow)
    assert other.is_file() and not (store / "mlflow.db").exists()
    experiment = mlflow.MlflowClient(f"sqlite:///{other}").get_experiment(experiment_id)
    assert experiment.name == params.mlflow.experiment


def test_a_sqlite_store_named_by_the_variable_keeps_artifacts_beside_it(params, store, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    """Not under the working folder, which under `dvc exp run --temp` DVC deletes afterwards."""
    other = tmp_path / "stores" / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    (tmp_path / "workspace").mkdir()
    monkeypatch.chdir(tmp_path / "workspace")
    experiment_id = tracking.use_store(params.mlflow)
    experiment = mlflow.MlflowClient(f"sqlite:///{other}").get_experiment(experiment_id)
    expected = (other.parent / params.mlflow.artifacts_dir).resolve().as_uri()
    assert experiment.artifact_location == expected


def git(cwd, *args):
    env = {**os.environ, **GIT_IDENTITY}
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


def test_lineage_tags_name_commit_changes_experiment_data_and_params(params, tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "-qm", "baseline")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "brave-fox")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")

    clean = lineage.lineage_tags({"train": "t" * 64}, params)
    assert clean["git.dirty"] == "false" and clean["git.changed_files"] == ""
    assert clean["dvc.exp_name"] == "brave-fox" and clean["dvc.baseline_rev"] == "abc123"
    assert clean["data.train_sha256"] == "t" * 64
    assert clean["params_sha256"] == lineage.params_sha256(params)

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
    git(tmp_path, "add", "pipeline")  # uncommitted code, beside the params
    (tmp_path / "params.yaml").write_text("seed: 3\n")
    named = lineage.run_name(lineage.lineage_tags({}, params))
    assert named == f"{commit} seed=3 +uncommitted code"
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert lineage.run_name(lineage.lineage_tags({}, params)) == f"{commit} +uncommitted code"
    assert lineage.run_name({}) is None  # outside git: MLflow's own random name


def test_run_name_lists_a_few_changed_params_then_how_many_more(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    base = {"seed": 1, "model": {"num_units": 128}, "train": {"learning_rate": 0.001}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base))
    git(tmp_path, "add", "params.yaml")
    git(tmp_path, "commit", "-qm", "baseline")
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


def test_params_hash_changes_with_any_value(params):
    changed = params.model_copy(update={"seed": params.seed + 1})
    assert lineage.params_sha256(params) != lineage.params_sha256(changed)
    assert lineage.params_sha256(params) == lineage.params_sha256(params.model_copy())


def no_secrets_logged(raw_params: dict) -> None:
    """Child process: make a run the way train does, with a secret in the environment."""
    os.environ["AWS_SECRET_ACCESS_KEY"] = "super-secret-value"
    params = config.parse_params(raw_params)
    experiment = tracking.use_store(params.mlflow)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_params(lineage.flatten(params.model_dump()))
        mlflow.set_tags(lineage.lineage_tags({"train": "0" * 64}, params))
    logged = mlflow.get_run(run.info.run_id).data
    assert "super-secret-value" not in str(logged.params) + str(logged.tags)


def pool(workers: int) -> ProcessPoolExecutor:
    """Fresh interpreters: a forked copy of this process inherits TensorFlow's runtime from
    earlier tests, without its threads, and can crash when it garbage-collects a tf.function."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def open_store(raw_params: dict) -> str:
    return tracking.use_store(config.parse_params(raw_params).mlflow)


@pytest.mark.slow
def test_parallel_processes_set_up_one_new_store_without_errors(raw_params, store):
    # A new SQLite store migrates on first use; without the lock two processes collide.
    with pool(4) as workers:
        experiment_ids = list(workers.map(open_store, [raw_params] * 4))
    assert len(set(experiment_ids)) == 1
    assert (store / "mlflow.db").is_file()


@pytest.mark.slow
def test_environment_secrets_are_not_logged(raw_params, store):
    with pool(1) as workers:
        workers.submit(no_secrets_logged, raw_params).result()


@pytest.mark.slow
def test_parallel_processes_share_one_store_without_locking_errors(raw_params, store):
    script = (
        "import sys, yaml, mlflow\n"
        "from pipeline.params import config\nfrom pipeline.tracking import store as tracking\n"
        "params = config.parse_params(yaml.safe_load(open(sys.argv[1])))\n"
        "experiment = tracking.use_store(params.mlflow)\n"
        "with mlflow.start_run(experiment_id=experiment):\n"
        "    for step in range(40):\n"
        "        mlflow.log_metric('x', step, step=step)\n"
    )
    import yaml

    params_file = store / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw_params))
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(params_file)], stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "DVC_ROOT": str(store)})
        for _ in range(4)
    ]  # fmt: skip
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
