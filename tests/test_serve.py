"""The REST server: MLflow's scoring protocol on the registered ONNX model, and what it refuses."""

import importlib.metadata
import json
import sys
import time
import urllib.request
from pathlib import Path

import keras
import numpy as np
import psutil
import pytest

from . import support

pytestmark = pytest.mark.slow
MAX_BODY = 200_000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def server(trained, folder):
    raw = trained.params.model_dump(mode="json")
    raw["serve"]["max_body_bytes"] = MAX_BODY
    # this server's rows only: the trained folder's log is written by the other xdist worker's
    raw["monitor"]["log_path"] = str(folder / "predictions.db")
    params = support.write_params(raw, folder / "params.yaml")
    with support.running("pipeline.serving.serve", ["--params", str(params)], "/ping",
                 folder / "server.log", {"DVC_ROOT": str(trained.root)}) as process:  # fmt: skip
        yield process


def post(server: support.Running, body: bytes) -> tuple[int, dict]:
    return support.post_json(server.url + "/invocations", body)


BAD_BODIES = {
    "malformed JSON": b'{"inputs": [[[0.1, 0.2',
    "empty body": b"",
    "wrong shape": json.dumps({"inputs": np.zeros((2, 27, 28)).tolist()}).encode(),
    "flat pixels": json.dumps({"inputs": np.zeros((1, 784)).tolist()}).encode(),
    "NaN": json.dumps({"inputs": np.full((1, 28, 28), np.nan).tolist()}).encode(),
    "out of range": json.dumps({"inputs": np.full((1, 28, 28), 255.0).tolist()}).encode(),
    "strings": json.dumps({"inputs": [[["a"] * 28] * 28]}).encode(),
    "not an object": b'"hello"',
    "oversized": json.dumps({"inputs": np.zeros((60, 28, 28)).tolist()}).encode(),
    "nested 99,000 deep": b'{"inputs": ' + b"[" * 99_000 + b"]" * 99_000 + b"}",  # under MAX_BODY
    "a DataFrame": json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1]]}}).encode(),
}


# what some of them must say: the limit, the range, what to send
SAID = {"oversized": (413, str(MAX_BODY)), "NaN": (400, "[0, 1]"), "out of range": (400, "[0, 1]"),
        "a DataFrame": (400, "not a DataFrame")}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_gets_a_4xx_with_one_line_and_the_server_goes_on(server, case):
    status, answer = post(server, BAD_BODIES[case])
    assert 400 <= status < 500, (status, answer)
    message = answer["message"]
    assert message and "\n" not in message and len(message) <= 300, message
    if case in SAID:
        assert status == SAID[case][0] and SAID[case][1] in message, answer
    status, answer = support.invocations(server.url, np.zeros((1, 28, 28), np.float32))
    assert status == 200 and np.asarray(answer["predictions"]).shape == (1, 10)  # still served


def test_answers_are_the_keras_models_and_each_is_counted_and_logged_for_its_version(
    server, trained, folder
):
    name = trained.params.mlflow.registered_model
    champion = trained.client().get_model_version_by_alias(name, "champion").version
    started, before = time.time(), support.prometheus_samples(server.url)
    images = np.random.default_rng(1).random((4, 28, 28), dtype=np.float32)
    answers = [post(server, json.dumps({key: images.tolist()}).encode())
               for key in ("inputs", "instances")]  # fmt: skip
    assert answers[0] == answers[1] and answers[0][0] == 200
    expected = keras.saving.load_model(trained.root / "models/model.keras").predict_on_batch(images)
    np.testing.assert_allclose(np.asarray(answers[0][1]["predictions"]), expected, atol=1e-5)
    for path in ("/ping", "/health"):
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            assert response.status == 200 and response.read()
    assert_serving(server, trained)
    status, refused = support.post_json(server.url + "/invocations", b"1,2", "text/csv")
    assert status == 415 and "application/json" in refused["message"]
    samples = support.prometheus_samples(server.url)
    info = [dict(labels) for (sample, labels) in samples if sample == "model_info"]
    assert info == [{"model": f"models:/{name}@champion", "version": f"models:/{name}/{champion}",
                     "shadow": ""}]  # fmt: skip
    route = {"route": "/invocations"}
    timings = "http_request_duration_seconds_count"
    scored, timed = (
        [support.sample_total(scrape, name, **labels) for scrape in (before, samples)]
        for name, labels in (("model_predictions_total", {}), (timings, route))
    )
    assert (scored[1] - scored[0], timed[1] - timed[0]) == (8, 3)

    def logged():  # written off the request path, by the log's own thread
        return support.logged_by("serve", folder / "predictions.db", started)

    assert support.wait_until(lambda: len(logged()) == 8, timeout=30)
    rows = logged()
    assert set(rows["model"]) == {f"models:/{name}/{champion}"} and rows["pixels"].isna().all()
    predicted = np.argmax(answers[0][1]["predictions"], axis=1)
    assert list(rows["predicted"]) == [*predicted, *predicted]


def assert_serving(server: support.Running, trained) -> None:
    """GET /version names MLflow's version, the champion as asked, its version and its copy."""
    with urllib.request.urlopen(server.url + "/version", timeout=10) as response:
        serving = json.loads(response.read())
    name = trained.params.mlflow.registered_model
    champion = trained.client().get_model_version_by_alias(name, "champion").version
    assert serving["mlflow"] == importlib.metadata.version("mlflow")
    assert serving["model"] == f"models:/{name}@champion"
    assert serving["pinned"] == f"models:/{name}/{champion}"
    assert (Path(serving["path"]) / "MLmodel").is_file()


BUILD_ALONE = """
import json, sys
from pipeline.serving import serve
from pipeline.params import tools
serve.build_app(sys.argv[1], tools.load_params(sys.argv[2]))
heavy = sorted(name for name in ("tensorflow", "keras", "mlflow", "sqlalchemy", "pandas")
               if name in sys.modules)
print(json.dumps(heavy))
"""


def test_the_app_holds_neither_tensorflow_nor_mlflow(trained, tmp_path):
    """The champion is resolved by MLflow in a child process; the server itself has none of it."""
    params = support.write_params(trained.params.model_dump(mode="json"), tmp_path / "params.yaml")
    champion = f"models:/{trained.params.mlflow.registered_model}@champion"
    result = support.run([sys.executable, "-c", BUILD_ALONE, champion, str(params)], support.REPO,
                         env=support.environment(DVC_ROOT=str(trained.root)))  # fmt: skip
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_workers_share_the_port_add_up_their_metrics_and_all_stop_with_the_server(
    trained, tmp_path
):
    raw = trained.params.model_dump(mode="json")
    raw["monitor"]["log_path"] = str(tmp_path / "predictions.db")  # this server's rows only
    args = ["--params", str(support.write_params(raw, tmp_path / "params.yaml")), "--workers", "2"]
    with support.running("pipeline.serving.serve", args, "/ping", tmp_path / "server.log",
                 {"DVC_ROOT": str(trained.root)}) as server:  # fmt: skip
        # the workers and multiprocessing's resource tracker
        spawned = psutil.Process(server.pid).children()
        workers = [child for child in spawned if "spawn_main" in " ".join(child.cmdline())]
        assert len(workers) == 2, spawned
        assert_serving(server, trained)  # what the supervisor pinned, in each worker
        for _ in range(40):  # a connection each: the kernel spreads them over both workers
            assert support.invocations(server.url, np.zeros((1, 28, 28), np.float32))[0] == 200
        samples = support.prometheus_samples(server.url)
        assert all("tensorflow" not in support.mapped_files(worker.pid) for worker in workers)
    route = {"route": "/invocations"}
    assert support.sample_total(samples, "http_requests_total", status="200", **route) == 40
    assert support.sample_total(samples, "http_request_duration_seconds_count", **route) == 40
    assert support.sample_total(samples, "model_predictions_total") == 40
    assert len([name for name, _ in samples if name == "model_info"]) == 1
    assert len(support.logged_by("serve", tmp_path / "predictions.db", 0)) == 40  # both workers
    # the resource tracker ends once it sees the supervisor's end of its pipe close
    _, alive = psutil.wait_procs(spawned, timeout=10)
    assert not alive, alive
