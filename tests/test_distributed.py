"""Multi-worker training: the custom step matches Keras's; chief and worker; a dying worker."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import train
from pipeline.training import cluster, distributed, fitting
from pipeline.training.network import build_model

from .support import REPO, environment, free_port, with_value, write_params

# A survivor gives up when its collectives fail (a reset, or distributed.COLLECTIVE_TIMEOUT_S
# of silence): a generous deadline for that, which guards against a hang only.
GIVE_UP_S = 180


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def test_cluster_from_tf_config_names_the_chief_and_counts_workers():
    two = tf_config([1, 2], 1)
    assert cluster.cluster_from_environment({"TF_CONFIG": two}) == cluster.Cluster(2, "worker", 1)
    assert not cluster.cluster_from_environment({"TF_CONFIG": two}).is_chief
    assert cluster.cluster_from_environment({"TF_CONFIG": tf_config([1, 2], 0)}).is_chief
    with_chief = {
        "cluster": {"chief": ["a:1"], "worker": ["b:1"]},
        "task": {"type": "worker", "index": 0},
    }
    parsed = cluster.cluster_from_environment({"TF_CONFIG": json.dumps(with_chief)})
    assert parsed.workers == 2 and not parsed.is_chief  # the chief job's task is the chief
    for bad in (
        {},
        {"TF_CONFIG": "{"},
        {"TF_CONFIG": tf_config([1, 2], 2)},
        {"TF_CONFIG": json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}})},
    ):
        with pytest.raises(cluster.DistributionError, match="TF_CONFIG"):
            cluster.cluster_from_environment(bad)  # fmt: skip
    assert cluster.check_batch_split(128, 2) == 64  # the global batch split between workers
    with pytest.raises(cluster.DistributionError, match=r"batch_size \(128\).*workers \(3\)"):
        cluster.check_batch_split(128, 3)


def test_multi_worker_without_tf_config_stops_with_one_line(raw_params, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    params_file = write_params(with_value(raw_params, "train.distribution", "multi_worker"),
                               tmp_path / "params.yaml")  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        train.main(["--params", str(params_file)])
    assert str(stop.value.code).startswith("error: train.distribution is multi_worker but "
                                           "TF_CONFIG is not set")  # fmt: skip


def test_custom_step_trains_like_the_keras_trainer(params, monkeypatch):
    """The custom step under MultiWorkerMirroredStrategy, to float32 rounding, vs Keras's fit."""
    monkeypatch.delenv("TF_CONFIG", raising=False)  # a local, one-worker strategy: no server
    rng = np.random.default_rng(0)
    x, y = rng.random((96, 28, 28), dtype=np.float32), rng.integers(0, 10, 96).astype(np.int32)
    data, val = {"x": x, "y": y}, {"x": x[:37], "y": y[:37]}  # 37: a partial eval batch too
    settings = params.train.model_copy(update={"iterations": 9, "log_every": 3})

    keras.utils.set_random_seed(params.seed)
    net = build_model(params.model)
    keras_reports: list[dict] = []
    fitting.fit(fitting.compile_trainer(net, settings), data, val, settings, params.seed,
                keras_reports.append)  # fmt: skip

    keras.utils.set_random_seed(params.seed)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 1
    reports: list[dict] = []
    trained = distributed.fit(strategy, params.model, data, val, settings, params.seed,
                              reports.append)  # fmt: skip

    assert [row["iteration"] for row in reports] == [3, 6, 9]
    for ours, keras_own in zip(reports, keras_reports, strict=True):
        assert ours == pytest.approx(keras_own, rel=1e-5, abs=1e-6)
    for ours, keras_own in zip(trained.get_weights(), net.get_weights(), strict=True):
        np.testing.assert_allclose(ours, keras_own, rtol=0, atol=1e-5)
    assert int(trained.optimizer.iterations.numpy()) == 9  # the trained Adam state, as saved
    assert trained.predict_on_batch(x[:2]).shape == (2, 10)  # outside the strategy


def multi_worker(raw_params: dict, **train_changes) -> dict:
    """Params for multi-worker training, with `train_changes`."""
    raw = with_value(raw_params, "train.distribution", "multi_worker")
    for key, value in train_changes.items():
        raw = with_value(raw, f"train.{key}", value)
    return raw


def start_workers(raw: dict, roots: list[Path]) -> tuple[list[subprocess.Popen], list[Path]]:
    """`python -m pipeline.train` once per root, each its own TF_CONFIG, store and outputs."""
    ports = [free_port() for _ in roots]
    processes, logs = [], []
    for index, root in enumerate(roots):
        root.mkdir(exist_ok=True)
        outputs = ("model", "onnx_model", "history", "run_info")
        paths = {key: str(root / Path(raw["paths"][key]).name) for key in outputs}
        params_file = write_params(raw | {"paths": raw["paths"] | paths}, root / "params.yaml")
        log = root.parent / f"worker-{index}.log"
        env = environment(TF_CONFIG=tf_config(ports, index), DVC_ROOT=str(root))
        with open(log, "w") as output:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "pipeline.train", "--params", str(params_file)],
                cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT))  # fmt: skip
        logs.append(log)
    return processes, logs


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_saves_and_logs(prepared, tmp_path, raw_params):
    raw = multi_worker(raw_params)
    roots = [tmp_path / "chief", tmp_path / "worker"]
    processes, logs = start_workers(raw, roots)
    try:
        codes = [process.wait(timeout=300) for process in processes]
    finally:
        stop(processes)
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    assert sorted(path.name for path in roots[1].iterdir()) == ["params.yaml"]  # no files, no db
    chief = roots[0]
    assert (chief / "model.keras").is_file() and (chief / "train_history.csv").is_file()
    assert (chief / "model.onnx").is_file()  # only the chief exports
    model = keras.saving.load_model(chief / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == raw["train"]["iterations"]
    import mlflow

    run_id = json.loads((chief / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{chief / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["train.workers"] == "2"
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [3, 6]
    assert "iteration 6/6: train loss" in logs[0].read_text()


def wait_for(text: str, log: Path, processes: list[subprocess.Popen], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while text not in log.read_text():
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            pytest.fail(f"no {text!r} in time:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "killed", [1, pytest.param(0, marks=pytest.mark.heavy)], ids=["worker-dies", "chief-dies"]
)
def test_a_dying_worker_makes_the_other_fail_with_one_line(killed, prepared, tmp_path, raw_params):
    raw = multi_worker(raw_params, iterations=30000)
    processes, logs = start_workers(raw, [tmp_path / "chief", tmp_path / "worker"])
    survivor = processes[1 - killed]
    try:
        wait_for("iteration 6/30000", logs[0], processes, deadline_s=180)  # training is under way
        processes[killed].send_signal(signal.SIGKILL)
        code = survivor.wait(timeout=GIVE_UP_S)
    finally:
        stop(processes)
    last_line = logs[1 - killed].read_text().strip().splitlines()[-1]
    assert code not in (0, None), code
    assert last_line.startswith("error: multi-worker training stopped: "), last_line
    if killed == 1:  # the chief's run is closed as failed
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'chief/mlflow.db'}")
        experiment = client.get_experiment_by_name(raw_params["mlflow"]["experiment"])
        runs = client.search_runs([experiment.experiment_id])
        assert [run.info.status for run in runs] == ["FAILED"]
