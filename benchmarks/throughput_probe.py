"""Microbenchmark: ways to score MNIST with the trained row-LSTM, batch 1,000 and one image.

    python -m benchmarks.throughput_probe [--model models/model.keras] [--only a,b] [--rounds 8]
        [--pyfunc FILE ...] [--intra N --inter N]

Each candidate is a function float32 (n, 28, 28) → probabilities (n, 10). All are built in one
process and timed interleaved (round robin), so drift on a shared machine hits each alike:
batch 1,000 as the median (and best) of `rounds` × 2 calls after warm-up, one image as the p50
of `singles` calls. Every candidate's output is checked against Keras's own `predict_on_batch`
(no XLA). Thread pools and options in the environment (TF_ENABLE_ONEDNN_OPTS, XLA_FLAGS)
are per process: run the script once per setting.
"""

# ruff: noqa: T201  (a command-line probe: its output is its result)
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SPEC = (28, 28)


def padded_to(size: int, images: np.ndarray) -> np.ndarray:
    if len(images) == size:
        return images
    padded = np.zeros((size, *SPEC), dtype=np.float32)
    padded[: len(images)] = images
    return padded


def chunked(score, chunk: int, pool=None):
    """Score in chunks of `chunk` (the last one padded), sequentially or on a thread pool."""

    def predict(images: np.ndarray) -> np.ndarray:
        if len(images) <= chunk:
            return score(images)
        parts = [images[start : start + chunk] for start in range(0, len(images), chunk)]
        results = pool.map(score, parts) if pool else map(score, parts)
        return np.concatenate(list(results))

    return predict


def next_power(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def candidates(keras_path: str) -> dict:
    import keras
    import tensorflow as tf

    def load(**changes):
        model = keras.saving.load_model(keras_path, compile=False)
        if not changes:
            return model
        config = model.get_config()
        for layer in config["layers"]:
            if layer["class_name"] == "LSTM":
                layer["config"].update(changes)
        rebuilt = keras.Model.from_config(config)
        rebuilt.set_weights(model.get_weights())
        return rebuilt

    plain = load()
    plain.compile(jit_compile=False)
    xla = load()
    xla.compile(jit_compile=True)
    looped = load(unroll=False)

    def pob(model, pad):
        def score(images):
            size = pad(len(images))
            return np.asarray(model.predict_on_batch(padded_to(size, images)))[: len(images)]

        return score

    def traced(model, jit):
        """model(x) in a tf.function; with XLA one compilation per distinct batch size."""
        function = tf.function(lambda x: model(x, training=False), jit_compile=jit,
                               reduce_retracing=True, autograph=False)  # fmt: skip

        def score(images, pad=lambda n: n):
            size = pad(len(images))
            return function(tf.constant(padded_to(size, images))).numpy()[: len(images)]

        return score

    lstm = plain.get_layer("lstm")
    dense = plain.get_layer("classes")
    kernel, recurrent, bias = (tf.constant(w) for w in lstm.get_weights())
    dense_w, dense_b = (tf.constant(w) for w in dense.get_weights())
    units = lstm.units

    def projected(x):
        """Keras's LSTM maths, the input projection of all 28 rows as one matmul."""
        batch = tf.shape(x)[0]
        gates_x = tf.reshape(tf.reshape(x, (-1, 28)) @ kernel + bias, (batch, 28, 4 * units))
        h = tf.zeros((batch, units))
        c = tf.zeros((batch, units))
        for step in range(28):
            z = gates_x[:, step] + h @ recurrent
            i, f, g, o = tf.split(z, 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
        return tf.nn.softmax(h @ dense_w + dense_b)

    proj_xla = tf.function(projected, jit_compile=True, reduce_retracing=True, autograph=False)
    proj_plain = tf.function(projected, jit_compile=False, reduce_retracing=True, autograph=False)

    def fn_score(function, pad=lambda n: n):
        def score(images):
            size = pad(len(images))
            return function(tf.constant(padded_to(size, images))).numpy()[: len(images)]

        return score

    pool = concurrent.futures.ThreadPoolExecutor(2)
    xla_pow2 = pob(xla, lambda n: min(next_power(n), 1024))
    xla_exact = pob(xla, lambda n: n)
    plain_exact = pob(plain, lambda n: n)
    traced_xla = traced(plain, True)
    traced_plain = traced(plain, False)
    return {
        "pob xla pow2 pad 1024 (first XLA pyfunc)": chunked(xla_pow2, 1024),
        "pob xla exact 1000": xla_exact,
        "pob xla 2x512 seq": chunked(xla_pow2, 512),
        "pob xla 2x512 2 threads": chunked(xla_pow2, 512, pool),
        "pob xla 4x256 seq": chunked(xla_pow2, 256),
        "pob xla 4x256 2 threads": chunked(xla_pow2, 256, pool),
        "pob xla 8x128 seq": chunked(xla_pow2, 128),
        "pob xla 8x128 2 threads": chunked(xla_pow2, 128, pool),
        "tf.function xla 4x256 2 threads": chunked(
            lambda im: traced_xla(im, lambda n: min(next_power(n), 256)), 256, pool
        ),
        "tf.function xla 8x128 2 threads": chunked(
            lambda im: traced_xla(im, lambda n: min(next_power(n), 128)), 128, pool
        ),
        "pob no-xla exact": plain_exact,
        "pob no-xla 2x500 2 threads": chunked(plain_exact, 500, pool),
        "tf.function xla exact": traced_xla,
        "tf.function no-xla exact": traced_plain,
        "tf.function xla 2x512 2 threads": chunked(
            lambda im: traced_xla(im, lambda n: min(next_power(n), 512)), 512, pool
        ),
        "looped lstm pob no-xla": pob(looped, lambda n: n),
        "one-matmul proj xla exact": fn_score(proj_xla),
        "one-matmul proj no-xla": fn_score(proj_plain),
        "one-matmul proj xla 2x512 2 threads": chunked(
            fn_score(proj_xla, lambda n: min(next_power(n), 512)), 512, pool
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(REPO / "models/model.keras"))
    parser.add_argument("--data", default=str(REPO / "data/raw/mnist.npz"))
    parser.add_argument("--only", default="", help="comma-separated substrings of names")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument(
        "--pyfunc",
        nargs="*",
        default=[],
        help="pyfunc_classifier.py files to time as candidates too "
        "(e.g. one from `git show HEAD~1:...`)",
    )
    parser.add_argument("--intra", type=int, default=None)
    parser.add_argument("--inter", type=int, default=None)
    args = parser.parse_args()

    import tensorflow as tf

    if args.intra is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    with np.load(args.data) as data:
        images = (data["x_test"][:1000] / 255.0).astype(np.float32)

    found = candidates(args.model)
    if args.only:
        wanted = args.only.split(",")
        found = {name: f for name, f in found.items() if any(w in name for w in wanted)}
    for number, path in enumerate(args.pyfunc):
        found[f"pyfunc {number}: {Path(path).name}"] = pyfunc_predict(path, args.model)
    reference = next(iter(candidates_reference(args.model, images)))
    times = {name: [] for name in found}
    singles = {name: [] for name in found}
    for name, predict in found.items():  # warm-up: compile every shape used below
        for _ in range(3):
            out = predict(images)
            predict(images[:1])
        check = (np.array_equal(out.argmax(1), reference.argmax(1)),
                 float(np.abs(out - reference).max()))  # fmt: skip
        singles[name] = check
    checks, singles = singles, {name: [] for name in found}
    for _ in range(args.rounds):
        for name, predict in found.items():
            for _ in range(2):
                started = time.perf_counter()
                predict(images)
                times[name].append(time.perf_counter() - started)
            for _ in range(args.singles // args.rounds):
                started = time.perf_counter()
                predict(images[:1])
                singles[name].append(time.perf_counter() - started)
    rows = []
    for name in found:
        rows.append({"candidate": name,
                     "batch1000_img_s": 1000 / float(np.median(times[name])),
                     "batch1000_best_img_s": 1000 / float(np.min(times[name])),
                     "one_image_p50_ms": 1000 * float(np.median(singles[name])),
                     "argmax_same": checks[name][0], "max_abs_diff": checks[name][1]})  # fmt: skip
    base = rows[0]["batch1000_img_s"]
    print(json.dumps({"cpu": cpu_model(), "machine": platform.machine(),
                      "intra": tf.config.threading.get_intra_op_parallelism_threads(),
                      "inter": tf.config.threading.get_inter_op_parallelism_threads(),
                      "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
                      "xla_flags": os.environ.get("XLA_FLAGS", "unset")}))  # fmt: skip
    print(
        f"{'candidate':40} {'img/s b1000':>12} {'ratio':>6} {'best':>7} {'p50 1 ms':>9} "
        f"{'argmax':>6} {'max|diff|':>9}"
    )
    for row in rows:
        print(
            f"{row['candidate']:40} {row['batch1000_img_s']:12,.0f} "
            f"{row['batch1000_img_s'] / base:6.2f} {row['batch1000_best_img_s']:7,.0f} "
            f"{row['one_image_p50_ms']:9.2f} "
            f"{row['argmax_same']!s:>6} {row['max_abs_diff']:9.1e}"
        )


def pyfunc_predict(path: str, keras_path: str):
    """The `predict` of a pyfunc_classifier.py file, loaded as MLflow would (load_context)."""
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location(f"probe_pyfunc_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.KerasClassifier()
    context = types.SimpleNamespace(artifacts={module.KERAS_ARTIFACT: keras_path})
    model.load_context(context)
    return lambda images: model.predict(context, images)


def candidates_reference(keras_path: str, images: np.ndarray):
    import keras

    model = keras.saving.load_model(keras_path, compile=False)
    yield np.asarray(model.predict_on_batch(images))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
