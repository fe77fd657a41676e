"""The gate: behavioural checks, floors, the gain, the verdict and `make promote`."""

import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

import pipeline.tracking.registry as registry
from pipeline import evaluate
from pipeline.data.files import load_arrays
from pipeline.gate import behaviour, rule
from pipeline.inference.onnx_network import OnnxNetwork
from pipeline.params import config, tools
from pipeline.tracking import store as tracking

from . import support

GATE = config.load_params(support.REPO / "params.yaml").evaluate  # the repo's own thresholds


def test_shifted_moves_each_image_by_its_offset_and_blanks_the_uncovered_side():
    images = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28)
    moved = behaviour.shifted(images, np.array([[1, 0], [0, -2]]))
    assert (moved[0, 1:] == images[0, :-1]).all() and (moved[0, 0] == 0).all()
    assert (moved[1, :, :-2] == images[1, :, 2:]).all() and (moved[1, :, -2:] == 0).all()
    offsets = behaviour.shifts(500, 2, np.random.default_rng(0))
    assert offsets.any(axis=1).all() and np.abs(offsets).max() == 2


def pixel_model(path: Path, reads_corner: bool) -> Path:
    """Class 1 where the top-left pixel (or the mean ink) exceeds 0.5, else class 0."""
    weights, bias = np.zeros((784, 10)), np.zeros(10)
    weights[: 1 if reads_corner else 784, 1], bias[0] = 20.0 if reads_corner else 20 / 784, 10.0
    return support.linear_onnx(path, weights, bias)


def centred_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images with ink in the middle, a lit top-left pixel on half of them, labelled by ink."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.float32)
    images[:, 6:22, 6:22] = rng.uniform(0.3, 1.0, (count, 16, 16))
    images[::2, 0, 0] = 1.0
    labels = (images.mean(axis=(1, 2)) > 0.5).astype(np.int64)
    return images, labels


def checks_of(model: Path) -> dict[str, rule.Check]:
    network = OnnxNetwork(model)
    images, labels = centred_digits(400)
    predictions = network.predict(images).argmax(axis=1)
    values = behaviour.behaviour_metrics(
        network.predict, images, labels, predictions, (2, GATE.noise_sigma), seed=0
    )
    metrics = values | {"test_accuracy": 1.0, "test_min_class_f1": 1.0}
    return {check.metric: check for check in rule.release_checks(metrics, GATE)}


def test_a_model_reading_one_corner_pixel_fails_the_invariance_check(tmp_path):
    corner = checks_of(pixel_model(tmp_path / "corner.onnx", reads_corner=True))
    ink = checks_of(pixel_model(tmp_path / "ink.onnx", reads_corner=False))
    assert not corner["shift_agreement"].passed
    assert corner["shift_agreement"].value < GATE.min_shift_agreement
    assert "shift invariance: shift_agreement = 0." in corner["shift_agreement"].line()
    assert ink["shift_agreement"].passed and ink["shift_agreement"].value > 0.95


def test_the_verdict_names_each_failed_check_with_value_and_threshold():
    metrics = {"test_accuracy": 0.31, "test_min_class_f1": 0.02, "shift_agreement": 0.9,
               "noise_accuracy_drop": 0.01}  # fmt: skip
    release = rule.release_checks(metrics, GATE)
    tags = rule.tags(release, rule.gain_check(0.98, 0.9795, GATE.min_gain))
    assert tags["validation.status"] == "failed"
    assert tags["validation.failed"] == "test_accuracy, test_min_class_f1"
    assert tags["validation.test_accuracy"] == (
        "test accuracy floor: test_accuracy = 0.3100, needs >= 0.95: FAILED"
    )
    assert tags["validation.gain"].endswith("needs >= champion 0.9795 + 0.001: no gain")
    assert rule.gain_check(0.981, 0.9795, GATE.min_gain).passed
    unscored = rule.gain_check(0.99, float("-inf"), GATE.min_gain)  # model not loadable
    assert not unscored.passed and "could not be loaded" in unscored.line()


def decision_of(release_passed: bool, gain: rule.Check | None, version, champion, before):
    metrics = {"test_accuracy": 0.98 if release_passed else 0.3, "test_min_class_f1": 0.95,
               "shift_agreement": 0.9, "noise_accuracy_drop": 0.01}  # fmt: skip
    return rule.Decision(rule.release_checks(metrics, GATE), gain, version, champion,
                             before)  # fmt: skip


def test_the_gate_gives_one_verdict_in_one_sentence():
    """No FAILED beside a pass; one sentence says what the version became and why."""
    no_gain = rule.gain_check(0.978, 0.978, 0.001)
    assert no_gain.outcome == "no gain" and not no_gain.failed and "FAILED" not in no_gain.line()
    line = decision_of(True, no_gain, 2, 1, 1).verdict_line()
    assert line == ("release checks passed; no gain over champion v1 (validation_accuracy "
                    "0.9780, needs >= champion 0.9780 + 0.001): challenger (version 2; "
                    "champion v1)")  # fmt: skip
    gained = decision_of(True, rule.gain_check(0.99, 0.978, 0.001), 3, 3, 1).verdict_line()
    assert gained.endswith("a gain over champion v1 (validation_accuracy 0.9900, needs >= "
                           "champion 0.9780 + 0.001): champion (version 3)")  # fmt: skip
    assert decision_of(True, None, 1, 1, None).verdict_line() == (
        "release checks passed: champion (version 1)")  # fmt: skip
    failed = decision_of(False, None, 4, 1, 1).verdict_line()
    assert failed.startswith("release checks FAILED (test_accuracy)") and "passed" not in failed
    assert failed.endswith("never champion (version 4; champion v1)")


# --- the champion rule on a store of versions -------------------------------------------


BEATS = rule.beats(0.001)  # as evaluate ranks: by at least evaluate.min_gain


@pytest.mark.parametrize(
    ("scores", "current", "expected"),
    [
        ({1: 0.90}, None, 1),
        ({1: 0.90, 2: 0.95}, 1, 2),  # better model takes it
        ({1: 0.95, 2: 0.90}, 1, 1),  # worse model never does
        ({1: 0.95, 2: 0.95}, 1, 1),  # a tie keeps the current champion
        ({1: 0.95, 2: 0.9505}, 1, 1),  # so does a gain below the minimum
        ({1: 0.95, 2: 0.97, 3: 0.97}, None, 2),  # earliest of the best
        ({1: 0.90, 2: 0.92, 3: 0.96}, 1, 3),  # the best of those that beat it
    ],
)
def test_choose_champion(scores, current, expected):
    assert rule.choose_champion(scores, current, BEATS) == expected


def register(client: mlflow.MlflowClient, name: str) -> int:
    """A run and a registered version pointing at it."""
    with mlflow.start_run() as run:
        pass
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    return int(version.version)


def contend(client: mlflow.MlflowClient, name: str, scores: dict, score: float) -> int:
    """A version that passed the whole gate, as evaluate tags it, with its validation score."""
    version = register(client, name)
    registry.tag_version(client, name, version, {rule.PASSED_AT_TAG: f"{time.time():.3f}"})
    scores[version] = score
    return version


def champion(client: mlflow.MlflowClient, name: str) -> int:
    return registry.alias_version(client, name, registry.CHAMPION)


def test_the_champion_moves_only_for_a_gain_and_rivals_passed_meanwhile_count(params, store):
    tracking.use_store(params.mlflow)
    client, name, scores = mlflow.MlflowClient(), params.mlflow.registered_model, {}
    first = contend(client, name, scores, 0.91)
    assert rule.settle_champion(name, first, scores.get, BEATS) == first
    worse = contend(client, name, scores, 0.85)
    assert rule.settle_champion(name, worse, scores.get, BEATS) == first
    better = contend(client, name, scores, 0.93)
    assert rule.settle_champion(name, better, scores.get, BEATS) == better
    # one evaluating at the same time passed and tagged itself, but its write of the alias
    # came before this one's read: this evaluation compares with it too, and it is better
    rival = contend(client, name, scores, 0.99)
    late = contend(client, name, scores, 0.97)
    assert rule.settle_champion(name, late, scores.get, BEATS) == rival
    assert champion(client, name) == rival


def test_promoted_by_hand_a_champion_meets_only_later_rivals_and_a_failed_one_needs_force(
    params, store
):
    tracking.use_store(params.mlflow)
    client, name, scores = mlflow.MlflowClient(), params.mlflow.registered_model, {}
    old = contend(client, name, scores, 0.90)
    best = contend(client, name, scores, 0.99)
    rule.settle_champion(name, best, scores.get, BEATS)
    assert rule.promote(name, old, "rollback", "tester", force=True) == best
    tags = registry.version_tags(client, name, old)
    assert tags["champion.reason"] == "rollback" and tags["champion.previous"] == str(best)
    newer = contend(client, name, scores, 0.92)  # beats the rolled-back one, not the best
    assert rule.settle_champion(name, newer, scores.get, BEATS) == newer
    failed = register(client, name)
    registry.tag_version(client, name, failed, {rule.STATUS_TAG: "failed",
                                                "validation.failed": "test_accuracy"})  # fmt: skip
    with pytest.raises(rule.PromotionError, match=r"failed the gate \(test_accuracy\)"):
        rule.promote(name, failed, "why not", "tester")
    with pytest.raises(rule.PromotionError, match="has no version 9"):
        rule.promote(name, 9, "why not", "tester")
    assert rule.promote(name, failed, "on purpose", "tester", force=True) == newer
    assert champion(client, name) == failed


# --- the gate in the tiny pipeline: train and evaluate, again and again, on one store -------


class Pipeline:
    """A tiny pipeline in its own folder and MLflow store, trained and evaluated as asked."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from pipeline import fetch, preprocess

        self.root, arrays = root, support.make_mnist()
        support.write_idx_folder(root / "mirror", arrays)
        self.raw = support.tiny_params(root, root / "mirror", arrays)
        support.use_store_at(root, monkeypatch)
        params = self.params()
        fetch.run(params)
        preprocess.run(params)

    def params(self, **changes: object) -> tools.ToolParams:
        raw = self.raw
        for key, value in changes.items():
            raw = support.with_value(raw, key.replace("__", "."), value)
        return tools.parse_params(raw)

    def version(self, **changes: object) -> tuple[int, dict]:
        """Train and evaluate with `changes` (keys with `__` for `.`); its version and tags."""
        from pipeline import train

        params = self.params(**changes)
        result = train.run(params)
        evaluate.run(params)
        client = self.client()
        run = client.get_run(result.run_id)
        version = int(run.data.tags["validation.version"])
        return version, registry.version_tags(client, "mnist-lstm", version)

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(f"sqlite:///{self.root / 'mlflow.db'}")

    def alias(self, name: str) -> int | None:
        return registry.alias_version(self.client(), "mnist-lstm", name)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield Pipeline(tmp_path_factory.mktemp("gate"), monkeypatch)


@pytest.mark.slow
def test_a_barely_trained_model_fails_a_floor_and_the_champion_stays(pipeline):
    champion = pipeline.alias("champion") or pipeline.version()[0]
    version, tags = pipeline.version(train__iterations=3, evaluate__min_test_accuracy=0.99)
    assert tags["validation.status"] == "failed"
    assert tags["validation.failed"] == "test_accuracy"
    assert tags["validation.test_accuracy"].endswith("needs >= 0.99: FAILED")
    assert pipeline.alias("champion") == champion and pipeline.alias("challenger") != version
    card = (pipeline.root / "reports/model_card.md").read_text()
    assert f"Never champion: it failed a release check; the champion stays version {champion}" in (
        card
    )


@pytest.mark.heavy
def test_a_champion_from_another_validation_split_is_scored_again_on_this_ones(pipeline):
    champion = pipeline.alias("champion") or pipeline.version()[0]
    from pipeline import preprocess

    params = pipeline.params(data__validation_size=30)
    preprocess.run(params)  # another split: 30 validation images, not 20
    try:
        version, tags = pipeline.version(data__validation_size=30, evaluate__min_gain=1.0)
        val = load_arrays(params.paths.split("val"))
        client = pipeline.client()
        folder = mlflow.artifacts.download_artifacts(
            f"models:/mnist-lstm/{champion}", dst_path=str(pipeline.root / "champion-copy"),
            tracking_uri=f"sqlite:///{pipeline.root / 'mlflow.db'}",
        )  # fmt: skip
        [onnx_file] = Path(folder).rglob("*.onnx")
        again = (OnnxNetwork(onnx_file).predict(val["x"]).argmax(axis=1) == val["y"]).mean()
        run = client.get_run(client.get_model_version("mnist-lstm", str(version)).run_id)
        assert len(val["y"]) == 30
        assert run.data.metrics["champion_validation_accuracy"] == pytest.approx(again)
        # a gain of 1.0 cannot be had: passed the release checks, so the challenger
        assert tags["validation.status"] == "passed" and tags["validation.gain"].endswith("no gain")
        assert pipeline.alias("challenger") == version and pipeline.alias("champion") == champion
    finally:
        preprocess.run(pipeline.params())


@pytest.mark.slow
def test_make_promote_refuses_a_failed_version_in_one_line(trained, trained_store, tmp_path):
    name = trained.params.mlflow.registered_model
    first = trained_store.get_model_version_by_alias(name, "champion")
    failed = int(trained_store.create_model_version(name, first.source, first.run_id).version)
    verdict = {rule.STATUS_TAG: "failed", "validation.failed": "test_accuracy"}
    registry.tag_version(trained_store, name, failed, verdict)
    params = support.write_params(trained.params.model_dump(mode="json"), tmp_path / "params.yaml")
    command = [sys.executable, "-m", "pipeline.tools.promote", "--version", str(failed),
               "--params", str(params), "--reason", "no"]  # fmt: skip
    refused = support.run(command, support.REPO, False, support.environment(DVC_ROOT=str(tmp_path)))
    assert refused.returncode == 1
    assert champion(trained_store, name) == int(first.version)
    assert refused.stderr.strip().splitlines() == [
        f"error: version {failed} failed the gate (test_accuracy): give FORCE=1 to promote it "
        "anyway"
    ]
