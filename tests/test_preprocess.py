"""preprocess: scaling, seeded validation split, data checks and corruption detection."""

import numpy as np
import pytest

from pipeline import fetch, preprocess
from pipeline.data.files import load_arrays, read_json


@pytest.fixture
def fetched(params):
    fetch.run(params)
    return params


def test_splits_are_scaled_sized_and_reported(fetched, tmp_path, mnist):
    report = preprocess.run(fetched)
    train = load_arrays(tmp_path / "data/processed/train.npz")
    val = load_arrays(tmp_path / "data/processed/val.npz")
    test = load_arrays(tmp_path / "data/processed/test.npz")
    assert len(val["x"]) == fetched.data.validation_size == 20
    assert len(train["x"]) + len(val["x"]) == len(mnist["x_train"])
    assert train["x"].dtype == np.float32 and train["x"].shape[1:] == (28, 28)
    assert 0.0 <= train["x"].min() and train["x"].max() <= 1.0
    assert np.array_equal(test["x"], mnist["x_test"].astype(np.float32) / 255)
    # every training image lands in exactly one of train or val
    seen = np.concatenate([train["x"], val["x"]]).reshape(len(mnist["x_train"]), -1)
    original = mnist["x_train"].astype(np.float32).reshape(len(mnist["x_train"]), -1) / 255
    assert sorted(map(bytes, seen)) == sorted(map(bytes, original))
    assert read_json(tmp_path / "reports/data_report.json") == report
    assert report["splits"]["val"]["images"] == 20
    assert sum(report["splits"]["train"]["class_counts"]) == len(train["x"])


def test_validation_split_is_seeded():
    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1)
    y = (np.arange(100) % 10).astype(np.uint8)
    first = preprocess.split_validation(x, y, 10, seed=1)
    again = preprocess.split_validation(x, y, 10, seed=1)
    other = preprocess.split_validation(x, y, 10, seed=2)
    assert np.array_equal(first["x_val"], again["x_val"])
    assert not np.array_equal(first["x_val"], other["x_val"])
    with pytest.raises(preprocess.DataError, match="validation_size = 100 must be between 1 and"):
        preprocess.split_validation(x, y, 100, seed=0)  # none left to train on


@pytest.mark.parametrize(
    ("classes", "message"),
    [(11, "labels uint8 up to 10, expected uint8 below 10"), (9, r"classes with no images: \[9\]")],
)
def test_labels_out_of_range_or_a_missing_class_fail_the_checks(classes, message):
    y = (np.arange(20) % classes).astype(np.uint8)
    with pytest.raises(preprocess.DataError, match=message):
        preprocess.check_split("train", np.zeros((20, 28, 28), np.float32), y, 10)


def test_corrupted_raw_file_is_detected_with_recovery_advice(fetched, tmp_path):
    raw_file = tmp_path / "data/raw/mnist.npz"
    content = bytearray(raw_file.read_bytes())
    content[len(content) // 2] ^= 0xFF
    raw_file.write_bytes(bytes(content))
    with pytest.raises(
        preprocess.DataError, match="corrupted .* `dvc checkout` .* `dvc repro -f fetch`"
    ):
        preprocess.run(fetched)
    assert not (tmp_path / "data/processed/train.npz").exists()
