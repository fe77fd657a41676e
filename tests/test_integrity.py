"""The ONNX file's sha256 is a version tag; evaluate, serve and predict refuse another file."""

import logging
import sys

import numpy as np
import pytest

from pipeline.data.files import load_arrays, sha256_file
from pipeline.gate import rule
from pipeline.inference.integrity import HASH_TAG, ModelError
from pipeline.tracking import registry

from .support import REPO, environment, free_port, run, write_params

pytestmark = pytest.mark.slow
WRONG = "0" * 64  # a hash no file has: as if the file in the store had been replaced


def test_evaluate_refuses_a_file_not_the_one_registered_and_such_a_champion_cannot_stay(
    trained, trained_store, caplog
):
    name = trained.params.mlflow.registered_model
    version = int(trained_store.get_model_version_by_alias(name, "champion").version)
    uri = f"models:/{name}/{version}"
    with pytest.raises(ModelError) as raised:
        registry.load_model(uri, WRONG)
    message = str(raised.value)
    assert "\n" not in message and uri in message and WRONG in message
    assert sha256_file(trained.root / trained.params.paths.onnx_model) in message
    registry.load_model(uri, trained_store.get_model_version(name, str(version)).tags[HASH_TAG])
    trained_store.set_model_version_tag(name, str(version), HASH_TAG, WRONG)
    val = {"x": load_arrays(trained.params.paths.split("val"))["x"][:8], "y": None}
    with caplog.at_level(logging.WARNING, logger=rule.__name__):
        assert rule.version_score(name, val, version) == float("-inf")
    assert f"refusing {uri}" in caplog.text and WRONG in caplog.text


def test_make_serve_and_predict_refuse_a_changed_file_in_one_line(trained, trained_store, tmp_path):
    name = trained.params.mlflow.registered_model
    version = trained_store.get_model_version_by_alias(name, "champion").version
    trained_store.set_model_version_tag(name, version, HASH_TAG, WRONG)
    params = write_params(trained.params.model_dump(mode="json"), tmp_path / "params.yaml")
    env = environment(DVC_ROOT=str(tmp_path))
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.float32))
    for module, args in (("pipeline.serving.serve", ["--port", str(free_port())]),
                         ("pipeline.serving.predict", [str(tmp_path / "digit.npy")])):  # fmt: skip
        command = [sys.executable, "-m", module, "--params", str(params), *args]
        result = run(command, REPO, check=False, env=env)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and len(errors) == 1, result.stderr
        assert f"refusing models:/{name}/{version}" in errors[0] and WRONG in errors[0]
