"""make serve and make demo follow the champion: a promotion under load served in time, no
request failed; a server on a version stays."""

import json
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from pipeline.monitoring.prediction_log import read_predictions

from . import support

pytestmark = pytest.mark.slow
FOLLOW_SECONDS = 1.0


def serving(url: str) -> str:
    with urllib.request.urlopen(url + "/version", timeout=10) as response:
        return json.loads(response.read())["pinned"]


class Load(threading.Thread):
    """Requests one after another until stopped; the statuses they got."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.statuses, self.stopping = url, [], threading.Event()
        self.body = json.dumps({"inputs": np.zeros((2, 28, 28)).tolist()}).encode()

    def run(self) -> None:
        while not self.stopping.is_set():
            status, answer = support.post_json(self.url + "/invocations", self.body)
            self.statuses.append(status if len(answer.get("predictions", ())) == 2 else -status)


def following(trained, tmp_path) -> tuple:
    """A copy of the trained store, its champion, and params that follow it every second."""
    client = support.own_store(trained, tmp_path)
    first = client.get_model_version_by_alias(trained.params.mlflow.registered_model, "champion")
    raw = trained.params.model_dump(mode="json")
    raw["serve"]["follow_seconds"] = FOLLOW_SECONDS
    raw["monitor"]["log_path"] = str(tmp_path / "predictions.db")
    return client, first, support.write_params(raw, tmp_path / "params.yaml")


def test_a_promotion_under_load_is_served_within_the_interval_and_no_request_fails(
    trained, tmp_path
):
    name = trained.params.mlflow.registered_model
    client, first, params = following(trained, tmp_path)
    second = client.create_model_version(name, first.source, first.run_id).version
    environment = {"DVC_ROOT": str(tmp_path)}
    with support.running("pipeline.serving.serve", ["--params", str(params)], "/ping",
                 tmp_path / "server.log", environment) as server:  # fmt: skip
        assert serving(server.url) == f"models:/{name}/{first.version}"
        load = Load(server.url)
        load.start()
        time.sleep(3 * FOLLOW_SECONDS)  # the watcher has started and said what it serves
        support.run([sys.executable, "-m", "pipeline.tools.promote", "--version", str(second),
                     "--reason", "test", "--force", "--params", str(params)], support.REPO,
                    env=support.environment(**environment))  # fmt: skip
        promoted = time.monotonic()  # the alias has moved
        assert support.wait_until(
            lambda: serving(server.url) == f"models:/{name}/{second}", timeout=30
        )
        moved_after = time.monotonic() - promoted
        time.sleep(FOLLOW_SECONDS)  # and some requests on the new version
        load.stopping.set()
        load.join(timeout=30)
        info = {dict(labels)["version"]: value
                for (sample, labels), value in support.prometheus_samples(server.url).items()
                if sample == "model_info"}  # fmt: skip
    assert load.statuses and set(load.statuses) == {200}, sorted(set(load.statuses))
    assert moved_after <= FOLLOW_SECONDS + 2, moved_after  # one check, then a load of the model
    assert info == {f"models:/{name}/{first.version}": 0, f"models:/{name}/{second}": 1}
    logged = read_predictions(tmp_path / "predictions.db")
    assert set(logged["model"]) == {f"models:/{name}/{first.version}", f"models:/{name}/{second}"}


def test_the_demo_follows_its_alias_too_and_a_server_on_a_fixed_version_never_moves(
    trained, real_model, tmp_path
):
    from .test_demo import png_data_url

    name = trained.params.mlflow.registered_model
    client, first, params = following(trained, tmp_path)
    body = json.dumps({"image": png_data_url(real_model.images[0])}).encode()
    pinned = ["--params", str(params), "--model", f"models:/{name}/{first.version}"]
    environment = {"DVC_ROOT": str(tmp_path)}
    with (
        support.running("pipeline.serving.demo", ["--params", str(params)], "/health",
                        tmp_path / "demo.log", environment) as demo,
        support.running("pipeline.serving.serve", pinned, "/ping", tmp_path / "server.log",
                        environment) as server,
    ):  # fmt: skip
        second = client.create_model_version(name, first.source, first.run_id).version
        client.set_registered_model_alias(name, "champion", second)

        def on_second() -> bool:
            samples = support.prometheus_samples(demo.url)
            return (
                support.sample_total(samples, "model_info", version=f"models:/{name}/{second}") == 1
            )

        assert support.wait_until(on_second, timeout=30), (tmp_path / "demo.log").read_text()
        started = time.time()
        assert support.post_json(demo.url + "/api/classify", body)[0] == 200
        log = tmp_path / "predictions.db"
        assert support.wait_until(lambda: len(support.logged_by("demo", log, started)), 30)
        time.sleep(2 * FOLLOW_SECONDS)  # the pinned server has had as long as the demo, and more
        assert serving(server.url) == f"models:/{name}/{first.version}"
    assert support.logged_by("demo", log, started)["model"].tolist() == [f"models:/{name}/{second}"]
