"""scoring: loss, accuracy, confusion matrix and per-class scores on a few known rows."""

import numpy as np
import pytest

from pipeline.reports import scores as scoring


def test_confusion_and_per_class_on_known_predictions():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 0, 2])
    confusion = scoring.confusion_matrix(labels, predictions, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    table = scoring.per_class_metrics(confusion, ["cat", "dog", "emu"])
    assert table["class"].tolist() == ["cat", "dog", "emu"]
    assert table["precision"].tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert table["recall"].tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert table["f1"].tolist() == pytest.approx([0.5, 0.8, 2 / 3])
    assert table["support"].tolist() == [2, 2, 2]
    never = scoring.confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2)
    never = scoring.per_class_metrics(never, ["a", "b"])
    assert never["precision"].tolist() == [0.5, 0.0] and never["f1"].tolist()[1] == 0.0  # not NaN


def test_summary_metrics():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    metrics = scoring.summary_metrics(probabilities, np.array([0, 1, 1]))
    assert metrics["test_accuracy"] == pytest.approx(2 / 3)
    assert metrics["test_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4])))
    clipped = scoring.summary_metrics(np.array([[1.0, 0.0]]), np.array([1]))  # not infinity
    assert clipped["test_loss"] == pytest.approx(-np.log(1e-7))
