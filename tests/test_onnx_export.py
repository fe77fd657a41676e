"""The ONNX export: Keras's probabilities within tolerance, plain ONNX ops, checked or refused."""

import re

import keras
import numpy as np
import onnx
import pytest

from pipeline.inference import onnx_network
from pipeline.params import config
from pipeline.training import onnx_export
from pipeline.training.network import build_model


def row_lstm(num_units: int, unroll: bool, seed: int) -> keras.Model:
    """The project's network with random weights large enough to make every gate matter."""
    shape = {"time_steps": 28, "n_input": 28, "n_classes": 10, "forget_bias": 1.0}
    network = build_model(config.ModelParams(num_units=num_units, unroll=unroll, **shape))
    rng = np.random.default_rng(seed)
    network.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in network.weights])
    return network


def images(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 28, 28), dtype=np.float32)


@pytest.mark.parametrize("unroll", [False, True])
def test_the_export_gives_kerass_probabilities_through_onnxs_own_lstm_op(tmp_path, unroll):
    network = row_lstm(12, unroll=unroll, seed=3)
    path = tmp_path / "model.onnx"
    difference = onnx_export.export_checked(network, path, images(64))
    assert difference <= onnx_export.TOLERANCE
    operators = {node.op_type for node in onnx.load(path).graph.node}
    assert "LSTM" in operators  # one fused op, whether or not training unrolled the steps
    assert not any("cudnn" in operator.lower() for operator in operators)
    # what the registered model and the servers run on that file scores any batch size
    runtime = onnx_network.OnnxNetwork(path)
    batch = images(2 * onnx_network.CHUNK + 3, seed=2)  # three calls into ONNX Runtime
    np.testing.assert_allclose(runtime.predict(batch), network.predict_on_batch(batch),
                               atol=onnx_export.TOLERANCE)  # fmt: skip
    np.testing.assert_array_equal(runtime.predict(batch[:1]), runtime.predict(batch)[:1])
    assert runtime.predict(batch[:0]).shape == (0, 10)


def test_an_export_that_disagrees_fails_in_one_line_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous model")
    with pytest.raises(onnx_export.ExportError, match="differs from the Keras network by"):
        onnx_export.export_checked(row_lstm(8, False, seed=0), path, images(8), tolerance=-1.0)
    assert path.read_bytes() == b"the previous model"
    assert sorted(item.name for item in tmp_path.iterdir()) == ["model.onnx"]
    network, other = row_lstm(8, False, seed=0), row_lstm(8, False, seed=1)  # the check sees
    onnx_export.write_onnx(network, tmp_path / "model.onnx")  # another network's weights
    assert onnx_export.largest_difference(network, tmp_path / "model.onnx", images(16)) <= 1e-5
    assert onnx_export.largest_difference(other, tmp_path / "model.onnx", images(16)) > 1e-2


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 27, 28)), "shape (2, 27, 28)"),
        (np.zeros((784,)), "shape (784,)"),
        (np.full((1, 28, 28), np.nan), "[0, 1]"),
        (np.where(np.eye(28) > 0, np.inf, 0.5)[None], "[0, 1]"),
        (np.full((1, 28, 28), -np.inf), "[0, 1]"),
        (np.full((2, 28, 28), -0.01), "[0, 1]"),
        (np.full((1, 28, 28), 255.0), "[0, 1]"),
        ([[["a"] * 28] * 28], "numbers"),
    ],
)
def test_bad_input_is_refused_with_what_is_wrong(bad, message):
    with pytest.raises(onnx_network.InputError, match=re.escape(message)):
        onnx_network.validated(bad)
