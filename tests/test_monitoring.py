"""Watching the served model: the prediction log, /metrics, a shadow, make monitor's drift."""

import contextlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.data.files import write_csv
from pipeline.inference.onnx_network import OnnxNetwork
from pipeline.monitoring import drift, monitor
from pipeline.monitoring.prediction_log import PredictionLog, Scored, images_of, read_predictions
from pipeline.monitoring.reference import (
    ARTIFACT,
    ModelReference,
    read_reference,
    reference_records,
)
from pipeline.monitoring.statistics import STATISTICS, input_statistics
from pipeline.params import tools
from pipeline.runtime.processes import environment_without

from . import support

REFERENCE_SEED = 100  # the windows' digits are drawn with other seeds


# --- models, digits and params --------------------------------------------------------------


def digits(count: int, seed: int) -> np.ndarray:
    """Digit-like images (count, 28, 28) in [0, 1]: two or three soft strokes in the centre."""
    rng = np.random.default_rng(seed)
    ends = rng.uniform(6, 21, (count, 3, 2, 2))  # (image, stroke, end, row/col)
    width = rng.uniform(0.8, 1.6, (count, 3, 1, 1))
    grid = np.stack(np.mgrid[0:28, 0:28], axis=-1).astype(float)  # (28, 28, 2)
    start, along = ends[:, :, 0], ends[:, :, 1] - ends[:, :, 0]  # (image, stroke, 2)
    offset = grid[None, None] - start[:, :, None, None]  # (image, stroke, 28, 28, 2)
    length2 = np.maximum((along**2).sum(-1), 1e-9)[:, :, None, None]
    t = np.clip((offset * along[:, :, None, None]).sum(-1) / length2, 0, 1)
    distance2 = ((offset - t[..., None] * along[:, :, None, None]) ** 2).sum(-1)
    strokes = np.exp(-distance2 / (2 * width**2))  # (image, stroke, 28, 28)
    strokes[:, 2] *= rng.random(count)[:, None, None] < 0.5  # a third stroke half the time
    return np.clip(strokes.max(axis=1) * 1.2, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    rngs = {role: np.random.default_rng(seed) for seed, role in enumerate(("champion", "shadow"))}
    return {role: support.linear_onnx(folder / f"{role}.onnx", rng.normal(0, 0.05, (784, 10)),
                              rng.normal(0, 0.1, 10)) for role, rng in rngs.items()}  # fmt: skip


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    """One MLflow store for the module's monitoring runs: its migrations run once."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def reference(models) -> pd.DataFrame:
    """The reference of 2,000 digits scored by the champion."""
    images = digits(2000, seed=REFERENCE_SEED)
    return reference_records(images, OnnxNetwork(models["champion"]).predict(images))


@pytest.fixture
def params(raw_params, reference, store_root, tmp_path, monkeypatch) -> tools.ToolParams:
    """Tiny params with the log, the reference and the report under tmp_path."""
    support.use_store_at(store_root, monkeypatch)
    monitor_settings = raw_params["monitor"]
    monitor_settings |= {"min_predictions": 100}
    write_csv(reference, raw_params["paths"]["monitor_reference"])
    support.write_params(raw_params, tmp_path / "params.yaml")
    return tools.parse_params(raw_params)


@pytest.fixture(scope="module")
def registered(store_root, reference, tmp_path_factory) -> dict[str, str]:
    """Two registered versions: the champion's run carries a reference, the other's none."""
    import mlflow

    client = support.client_for(store_root)
    name = f"monitored-{store_root.name}"
    client.create_registered_model(name)
    experiment = client.create_experiment(f"{name}-runs")
    path = tmp_path_factory.mktemp("reference") / "monitor_reference.csv"
    write_csv(reference, path)
    uris = {}
    for role, carries in (("champion", True), ("without", False)):
        run_id = client.create_run(experiment).info.run_id
        if carries:
            client.log_text(run_id, path.read_text(), ARTIFACT)
        version = client.create_model_version(name, f"runs:/{run_id}/model", run_id).version
        uris[role] = f"models:/{name}/{version}"
        client.set_terminated(run_id)
    mlflow.set_tracking_uri("")  # support.client_for set nothing global; this keeps it that way
    return uris


def params_file(params: tools.ToolParams, tmp_path: Path, **monitor_settings) -> Path:
    raw = params.model_dump(mode="json")
    raw["monitor"] |= monitor_settings
    return support.write_params(
        raw, tmp_path / f"params-{len(list(tmp_path.glob('params-*')))}.yaml"
    )


def log_directly(
    params: tools.ToolParams, model: Path, images: np.ndarray, name: str | None = None
) -> None:
    """What a server logs for `images`, named `name` (the file by default)."""
    settings = params.monitor
    writer = PredictionLog(settings.log_path, "serve", name or str(model), settings.log_max_bytes)
    for batch in np.array_split(images, 10):
        writer.write(Scored.of(batch, OnnxNetwork(model).predict(batch), keep_pixels=False))
    writer.close()


def reaches(url: str, name: str, expected: float) -> bool:
    """Whether a server's /metrics total of `name` comes to `expected` within 30 s."""
    return support.wait_until(
        lambda: support.sample_total(support.prometheus_samples(url), name) == expected, 30
    )


# --- what is measured of an image, and the reference ----------------------------------------


def test_the_statistics_of_known_images():
    images = np.zeros((2, 28, 28), np.float32)
    images[0, 4:6, 10:12] = 1.0  # a 2×2 block of ink
    images[0, 20, 20] = 0.05  # a faint pixel: ink mass, but no stroke
    found = input_statistics(images)
    assert set(found) == set(STATISTICS) and all(values.shape == (2,) for values in found.values())
    assert found["ink"][0] == pytest.approx(4.05)
    assert found["centre_row"][0] == pytest.approx((4.5 * 4 + 20 * 0.05) / 4.05)
    assert found["centre_col"][0] == pytest.approx((10.5 * 4 + 20 * 0.05) / 4.05)
    assert found["mean_intensity"][0] == pytest.approx(1.0)
    blank = [found[name][1] for name in STATISTICS]
    assert blank == [0.0, 13.5, 13.5, 0.0]  # no ink: the image's centre


def test_the_reference_has_a_row_per_test_image_and_reads_back(tmp_path, models):
    images = digits(50, seed=3)
    probabilities = OnnxNetwork(models["champion"]).predict(images)
    path = tmp_path / "reports" / "monitor_reference.csv"
    write_csv(reference_records(images, probabilities), path)
    reference = read_reference(path.read_text())
    assert len(reference) == 50
    assert list(reference["predicted"]) == list(probabilities.argmax(axis=1))
    np.testing.assert_allclose(reference["confidence"], probabilities.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(reference["ink"], input_statistics(images)["ink"], rtol=1e-5)


# --- make monitor ---------------------------------------------------------------------------


def test_drift_names_what_moved_and_only_that(params, reference, models):
    """Digits moved right: the column centre drifted, not the row centre nor the ink."""
    moved = np.zeros((500, 28, 28), np.float32)
    moved[:, :, 4:] = digits(500, seed=1)[:, :, :-4]  # 4 pixels right, the background filling in
    log_directly(params, models["champion"], moved)
    window = read_predictions(params.monitor.log_path)
    verdict = monitor.judge(window, own(reference, window), params.monitor, 0, time.time())
    assert verdict.tested and verdict.predictions == 500 and verdict.exit_code == 1
    assert "centre_col" in verdict.drifted and not {"centre_row", "ink"} & set(verdict.drifted)


def own(reference: pd.DataFrame, window: pd.DataFrame) -> dict[str, ModelReference]:
    """The reference for every model the window names (they all score like the champion)."""
    return {
        name: ModelReference(name, reference, "the test's") for name in monitor.models_in(window)
    }


def test_a_difference_too_small_to_matter_is_no_drift_however_certain():
    rng = np.random.default_rng(13)
    reference, window = pd.Series(rng.normal(0, 1, 20_000)), pd.Series(rng.normal(0.1, 1, 20_000))
    found = drift.distribution("ink", reference, window, drift.Thresholds(0.01, 0.2))
    assert found.p_value < 1e-6 and found.distance < 0.1 and not found.drifted
    assert drift.distribution("ink", reference, window, drift.Thresholds(0.01, 0.0)).drifted


def test_make_monitor_exits_0_on_clean_images_then_1_naming_what_moved(
    params, models, registered, store_root, tmp_path, caplog
):
    """Clean images, then inverted ones: each look names the version and its reference's run."""
    argv = ["--params", str(tmp_path / "params.yaml"), "--since", "1h"]
    report = Path(params.monitor.report_dir) / "report.md"
    exits, pages = [], []
    for images in (digits(300, seed=2), 1 - digits(300, seed=3)):
        log_directly(params, models["champion"], images, registered["champion"])
        with pytest.raises(SystemExit) as stop:
            monitor.main(argv)
        exits.append(stop.value.code)
        pages.append(report.read_text())
    assert exits == [0, 1]
    for page, count in zip(pages, (300, 600), strict=True):
        assert f"## Served: {registered['champion']} ({count} predictions)" in page
        assert "Reference: its evaluate run " in page
    assert "**No drift** (" in pages[0] and "**Drift: " in pages[1]
    line = next(rec.getMessage() for rec in caplog.records if rec.message.startswith("drift in"))
    assert f"of served {registered['champion']}" in line and "its evaluate run" in line
    assert "600 predictions" in line and "ink" in line and "mean_intensity" in line
    assert (report.parent / "drift.png").is_file()
    client = support.client_for(store_root)
    experiment = client.get_experiment_by_name(f"{params.mlflow.experiment}-monitoring")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    latest, before = runs[0].data, runs[1].data
    assert (before.metrics["drift"], latest.metrics["drift"]) == (0, 1)
    assert latest.metrics["predictions"] == 600
    assert latest.metrics["p_value/ink"] < params.monitor.alpha
    assert "ink" in latest.tags["monitor.drifted"] and before.tags["monitor.drifted"] == "none"
    assert latest.tags["monitor.models"] == registered["champion"]
    assert latest.tags["monitor.references"].startswith(f"{registered['champion']}: its evaluate")
    assert {item.path for item in client.list_artifacts(runs[0].info.run_id, "monitoring")} == {
        "monitoring/report.md", "monitoring/drift.png"}  # fmt: skip


def test_each_version_is_judged_by_its_own_reference_and_one_without_gets_no_verdict(
    params, models, registered, caplog
):
    """Versions in one window: each against its own reference; one without gets no verdict."""
    log_directly(params, models["champion"], 1 - digits(200, seed=7), registered["without"])
    log_directly(params, models["champion"], digits(300, seed=8), registered["champion"])
    log_directly(params, models["shadow"], 1 - digits(150, seed=9))
    verdict = monitor.run(params)
    judged = {model.model: model for model in verdict.models}
    assert [model.model for model in verdict.models][0] == registered["champion"]
    assert judged[registered["champion"]].tested and not judged[registered["champion"]].drifted
    for other in (registered["without"], str(models["shadow"])):
        assert judged[other].reference_rows == 0 and not judged[other].tested
    assert judged[registered["without"]].reference.startswith("none in this store")
    assert verdict.exit_code == 0 and verdict.drifted == []  # the inverted rows had no reference
    said = [record.getMessage() for record in caplog.records]
    assert any(
        f"served {registered['without']}" in line and "no reference" in line for line in said
    )


def test_make_monitor_gives_no_verdict_on_too_few_and_one_line_without_a_log_or_a_bad_since(
    params, models, tmp_path, capsys
):
    log_directly(params, models["champion"], digits(20, seed=4))
    verdict = monitor.run(params)
    assert not verdict.tested and verdict.exit_code == 0 and verdict.predictions == 20
    assert monitor.run(params, since="2000-01-01").predictions == 20
    in_a_minute = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 60))
    assert monitor.run(params, since=in_a_minute).predictions == 0
    nowhere = params_file(params, tmp_path, log_path=str(tmp_path / "none.db"))
    with pytest.raises(monitor.LogError, match="no prediction log at .*none.db"):
        monitor.run(tools.load_params(nowhere))
    with pytest.raises(SystemExit) as stop:  # a bad param: test_params_property.py
        monitor.main(["--params", str(tmp_path / "params.yaml"), "--since", "yesterday"])
    assert stop.value.code == 2 and "duration" in capsys.readouterr().err


# --- the servers ------------------------------------------------------------------------------


def serve(params_path: Path, models: dict, log: Path, *args: str):
    return support.running("pipeline.serving.serve",
                   ["--params", str(params_path), "--model", str(models["champion"]), *args],
                   "/ping", log)  # fmt: skip


def test_a_shadow_never_changes_an_answer_and_both_predictions_are_logged(
    params, reference, models, tmp_path
):
    path = params_file(params, tmp_path)
    champion, shadow = OnnxNetwork(models["champion"]), OnnxNetwork(models["shadow"])
    images = digits(100, seed=5)
    with serve(path, models, tmp_path / "server.log", "--shadow", str(models["shadow"])) as server:
        for batch in np.array_split(images, 20):
            status, answer = support.invocations(server.url, batch)
            assert status == 200
            np.testing.assert_allclose(answer["predictions"], champion.predict(batch), atol=1e-6)
        assert reaches(server.url, "shadow_predictions_total", 100)  # scored off the request path
        samples = support.prometheus_samples(server.url)
    predicted = champion.predict(images).argmax(axis=1)
    for label in range(10):
        expected = (predicted == label).sum()
        assert (
            support.sample_total(samples, "model_predictions_total", **{"class": str(label)})
            == expected
        )
    info = [dict(labels) for (name, labels), value in samples.items() if name == "model_info"]
    assert info == [{"model": str(models["champion"]), "version": str(models["champion"]),
                     "shadow": str(models["shadow"])}]  # fmt: skip
    logged = read_predictions(params.monitor.log_path)  # the server stopped: all written
    assert len(logged) == 100 and set(logged["shadow_model"]) == {str(models["shadow"])}
    assert list(logged["predicted"]) == list(predicted)
    assert list(logged["shadow_predicted"]) == list(shadow.predict(images).argmax(axis=1))
    verdict = monitor.judge(logged, own(reference, logged), params.monitor, 0, time.time())
    assert [(model.role, model.predictions) for model in verdict.models] == [
        ("served", 100), ("shadow", 100)]  # fmt: skip
    shadow_rows = verdict.models[1]  # the shadow's answers against its reference
    assert shadow_rows.model == str(models["shadow"]) and shadow_rows.tested
    same = float((logged["predicted"] == logged["shadow_predicted"]).mean())
    assert [(agreed.images, agreed.share) for agreed in verdict.agreements] == [(100, same)]
    assert f"| {models['shadow']} | 100 | {same:.1%} |" in monitor.markdown(verdict)


def test_the_log_reads_back_after_a_restart_and_after_kill_9(params, models, tmp_path):
    path = params_file(params, tmp_path)
    image = digits(1, seed=6)
    expected = input_statistics(image)["ink"][0]
    port = support.free_port()
    with open(tmp_path / "killed.log", "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serving.serve", "--params", str(path), "--model",
             str(models["champion"]), "--port", str(port)],
            cwd=support.REPO, env=environment_without("MLFLOW_"), stdout=output, stderr=output,
        )  # fmt: skip
    url, stop = f"http://127.0.0.1:{port}", threading.Event()

    def traffic() -> None:  # bounded: until told, or 2,000 requests
        for _ in range(2000):
            if stop.is_set():
                return
            with contextlib.suppress(OSError):
                support.invocations(url, image)

    sender = threading.Thread(target=traffic)
    try:
        support.wait_until_healthy(url + "/ping", process, tmp_path / "killed.log", deadline_s=60)
        sender.start()
        logged = lambda: len(support.logged_by("serve", params.monitor.log_path, 0)) >= 50  # noqa: E731
        assert support.wait_until(logged, timeout=30)
        process.send_signal(signal.SIGKILL)  # mid-traffic: requests in flight, rows queued
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop.set()
        process.kill()
        process.wait()
        if sender.is_alive() or sender.ident:
            sender.join(timeout=30)
    database = Path(params.monitor.log_path)
    with contextlib.closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    survived = read_predictions(database)
    assert len(survived) >= 50 and survived["ink"].to_numpy() == pytest.approx(expected, rel=1e-5)
    with serve(path, models, tmp_path / "restarted.log") as server:
        assert support.invocations(server.url, digits(3, seed=7))[0] == 200
    after = read_predictions(database)
    assert len(after) == len(survived) + 3
    assert after.iloc[: len(survived)].equals(survived)


def test_an_unwritable_log_costs_a_warning_not_a_request(params, models, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    path = params_file(params, tmp_path, log_path=str(tmp_path / "a_file" / "predictions.db"))
    with serve(path, models, tmp_path / "server.log") as server:
        for batch in np.array_split(digits(30, seed=8), 6):
            assert support.invocations(server.url, batch)[0] == 200
        assert reaches(server.url, "prediction_log_dropped_total", 30)
        assert (
            support.sample_total(support.prometheus_samples(server.url), "model_predictions_total")
            == 30
        )
    warnings = [line for line in (tmp_path / "server.log").read_text().splitlines()
                if "cannot write" in line]  # fmt: skip
    assert len(warnings) == 1 and "a_file/predictions.db" in warnings[0], warnings


def test_the_log_keeps_to_its_size_cap_dropping_the_oldest_and_pixels_only_when_asked(tmp_path):
    path, cap = tmp_path / "predictions.db", 65536
    writer = PredictionLog(path, "serve", "model.onnx", cap)
    images = digits(100, seed=10)
    probabilities = np.random.default_rng(9).dirichlet(np.ones(10), 100).astype(np.float32)
    for _ in range(40):  # 4,000 rows: several times what fits under the cap
        writer.write(Scored.of(images, probabilities, keep_pixels=False))
    writer.close()
    logged = read_predictions(path)
    assert 0 < len(logged) < 4000 and logged["id"].max() == 4000  # the newest are kept
    assert path.stat().st_size < 2 * cap
    assert logged["pixels"].isna().all()
    writer = PredictionLog(tmp_path / "pixels.db", "demo", "model.onnx", 10**6)
    writer.write(Scored.of(images[:4], probabilities[:4], keep_pixels=True))
    writer.close()
    kept = images_of(read_predictions(tmp_path / "pixels.db")["pixels"])
    np.testing.assert_allclose(kept, images[:4], atol=0.5 / 255)


def test_a_small_batchs_statistics_are_the_writers_and_the_same(tmp_path):
    images = digits(40, seed=11)
    probabilities = np.random.default_rng(3).dirichlet(np.ones(10), 40).astype(np.float32)
    writer = PredictionLog(tmp_path / "predictions.db", "serve", "model.onnx", 10**6)
    small, large = (Scored.of(images[:n], probabilities[:n], keep_pixels=False) for n in (4, 40))
    assert small.statistics is None and large.images is None  # computed later, and at once
    writer.write(small)
    writer.write(large)
    writer.close()
    logged = read_predictions(tmp_path / "predictions.db")
    expected = input_statistics(np.concatenate([images[:4], images]))
    for name in STATISTICS:
        np.testing.assert_allclose(logged[name], expected[name], rtol=1e-12)


def test_the_default_log_path_is_ignored_by_git_and_dvc():
    settings = yaml.safe_load((support.REPO / "params.yaml").read_text())["monitor"]
    folder = Path(settings["log_path"]).parts[0]
    assert f"{folder}/" in (support.REPO / ".gitignore").read_text().split()
    assert f"{folder}/" in (support.REPO / ".dvcignore").read_text().split()
