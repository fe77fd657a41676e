"""The registered model's pyfunc: its fast forward pass is Keras's maths; other nets use Keras."""

from __future__ import annotations

import types
from pathlib import Path

import keras
import numpy as np

from pipeline.serving import pyfunc_classifier
from pipeline.shared import config
from pipeline.shared.model import build_model


def row_lstm(num_units: int, unroll: bool, seed: int) -> keras.Model:
    """The project's network with random weights large enough to make every gate matter."""
    shape = {"time_steps": 28, "n_input": 28, "n_classes": 10, "forget_bias": 1.0}
    network = build_model(config.ModelParams(num_units=num_units, unroll=unroll, **shape))
    rng = np.random.default_rng(seed)
    network.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in network.weights])
    return network


def loaded(network: keras.Model, folder: Path) -> pyfunc_classifier.KerasClassifier:
    """The pyfunc as MLflow loads it: load_context over the saved .keras artifact."""
    path = folder / "model.keras"
    network.save(path)
    classifier = pyfunc_classifier.KerasClassifier()
    artifacts = {pyfunc_classifier.KERAS_ARTIFACT: str(path)}
    classifier.load_context(types.SimpleNamespace(artifacts=artifacts))
    return classifier


def test_fused_forward_gives_the_keras_models_probabilities(tmp_path):
    network = row_lstm(12, unroll=False, seed=3)
    classifier = loaded(network, tmp_path)
    assert classifier.forward == "fused"
    # more than one chunk: two calls on the thread pool, the second padded; then one image
    images = np.random.default_rng(1).random((pyfunc_classifier.CHUNK + 1, 28, 28), "float32")
    expected = network.predict_on_batch(images)
    np.testing.assert_allclose(classifier.predict(None, images), expected, atol=1e-5)
    np.testing.assert_allclose(classifier.predict(None, images[:1]), expected[:1], atol=1e-5)


def test_any_other_network_is_scored_by_calling_the_keras_model(tmp_path):
    images_in = keras.Input((28, 28))
    rows = keras.layers.Reshape((28, 28))(images_in)
    hidden = keras.layers.LSTM(8, recurrent_activation="hard_sigmoid")(rows)  # not the fused maths
    network = keras.Model(images_in, keras.layers.Dense(10, activation="softmax")(hidden))
    classifier = loaded(network, tmp_path)
    assert classifier.forward == "keras"
    images = np.random.default_rng(2).random((5, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(classifier.predict(None, images), network.predict_on_batch(images),
                               atol=1e-5)  # fmt: skip


def test_the_load_check_rejects_a_forward_pass_that_differs_from_the_model():
    network, other = row_lstm(8, False, seed=0), row_lstm(8, False, seed=1)
    fused = pyfunc_classifier.compiled(pyfunc_classifier.fused_row_lstm(network))
    assert pyfunc_classifier.agrees(fused, network)
    assert not pyfunc_classifier.agrees(fused, other)
