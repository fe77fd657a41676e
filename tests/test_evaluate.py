"""evaluate: reports on disk, results logged into the run that train started, the model card."""

import json
import sys

import pandas as pd
import pytest

from pipeline import evaluate
from pipeline.gate import rule

from .support import REPO, environment, run, with_value


def test_evaluate_writes_reports_and_logs_into_train_run(trained):
    root, written = trained.root, json.loads((trained.root / "reports/metrics.json").read_text())
    assert written == trained.metrics
    confusion = pd.read_csv(root / "reports/confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 40
    assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(
        written["test_accuracy"]
    )
    per_class = pd.read_csv(root / "reports/per_class.csv")
    assert per_class["support"].sum() == 40
    reference = pd.read_csv(root / "reports/monitor_reference.csv")  # make monitor's baseline
    assert len(reference) == 40
    assert (reference["predicted"].astype(str) == confusion["predicted"].astype(str)).all()

    client = trained.client()
    runs = client.search_runs([client.get_run(trained.run_id).info.experiment_id])
    assert [run.info.run_id for run in runs] == [trained.run_id]  # no second run
    logged = runs[0].data.metrics
    assert logged["test_accuracy"] == pytest.approx(written["test_accuracy"])
    assert "test_f1/9" in logged and "val_loss" in logged and "shift_agreement" in logged
    assert "validation_accuracy" in written
    artifacts = {item.path for item in client.list_artifacts(trained.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.json" in artifacts
    own = client.download_artifacts(trained.run_id, "monitoring/reference.csv", str(root / "o"))
    pd.testing.assert_frame_equal(pd.read_csv(own), reference)  # this version's own, for monitor
    figures = {item.path for item in client.list_artifacts(trained.run_id, "figures")}
    assert figures == {"figures/training_curves.png", "figures/confusion_matrix.png",
                       "figures/misclassified.png"}  # fmt: skip
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (root / "reports/figures" / name).read_bytes().startswith(b"\x89PNG")

    # the first version to pass the gate is champion, with its verdict
    name = trained.params.mlflow.registered_model
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    tags = client.get_model_version(name, "1").tags
    assert tags[rule.STATUS_TAG] == "passed" and rule.PASSED_AT_TAG in tags


def test_model_card_names_run_data_scores_and_figures(trained):
    card = (trained.root / "reports/model_card.md").read_text()
    manifest = json.loads((trained.root / "data/raw/manifest.json").read_text())
    assert card.startswith("# Model card: mnist-lstm version 1")
    assert f"MLflow run: `{trained.run_id}`" in card
    assert manifest["arrays_sha256"]["x_train"] in card
    assert f"accuracy: **{trained.metrics['test_accuracy']:.4f}**" in card
    assert "![confusion matrix](figures/confusion_matrix.png)" in card
    assert "![misclassified test images](figures/misclassified.png)" in card
    assert "champion (`models:/mnist-lstm@champion`): this version" in card
    assert "## Validation\n" in card and "Gate: **passed**. It became `champion`" in card
    assert "| test accuracy floor | `test_accuracy` |" in card
    assert "| model.num_units | 8 |" in card
    assert "## Intended use and limits" in card
    logged = {item.path for item in trained.client().list_artifacts(trained.run_id)}
    assert "model_card.md" in logged


EVALUATE_ALONE = """
import json, sys
from pipeline import evaluate
from pipeline.params import config
metrics = evaluate.run(config.load_params(sys.argv[1]))
heavy = sorted(name for name in ("tensorflow", "keras", "tf2onnx") if name in sys.modules)
print(json.dumps({"heavy": heavy, "metrics": metrics}))
"""


def test_evaluate_imports_no_tensorflow_and_names_another_data_set_as_the_params_say(
    trained, tmp_path
):
    """Pointed at another ten-class data set, nothing written claims MNIST or digits."""
    raw = with_value(trained.params.model_dump(mode="json"), "data.name", "Fashion-MNIST")
    names = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot"]  # fmt: skip
    raw = with_value(raw, "data.class_names", names)
    for key in ("metrics", "per_class", "confusion", "figures_dir"):  # evaluate's outputs here
        raw = with_value(raw, f"paths.{key}", str(tmp_path / key))
    raw = with_value(raw, "paths.model_card", str(tmp_path / "card.md"))
    (tmp_path / "params.yaml").write_text(json.dumps(raw))  # JSON is YAML
    result = run([sys.executable, "-c", EVALUATE_ALONE, str(tmp_path / "params.yaml")], REPO,
                 env=environment(DVC_ROOT=str(trained.root)))  # fmt: skip
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer == {"heavy": [], "metrics": trained.metrics}
    card = (tmp_path / "card.md").read_text()
    assert pd.read_csv(tmp_path / "per_class")["class"].tolist() == names
    assert set(pd.read_csv(tmp_path / "confusion")["actual"]) == set(names)
    assert "Fashion-MNIST" in card and "`Ankle boot`" in card
    for claim in ("MNIST,", "MNIST images", "digit", "handwritten"):
        assert claim not in card.replace("Fashion-MNIST", ""), claim
    assert "test_f1/Ankle boot" in trained.client().get_run(trained.run_id).data.metrics
    assert evaluate.metric_safe("T-shirt/top") == "T-shirt/top"  # what MLflow accepts, kept
    assert evaluate.metric_safe("a:b*c") == "a_b_c"
