"""The three trainers compared, run one per process: `python -m benchmarks.contenders NAME ...`.

- project: the pipeline's own code (pipeline.model + pipeline.fitting, as `pipeline.train` runs it)
- naive:   a plain Keras port, `keras.layers.LSTM(128)` and `model.fit`
- peer:    PyTorch `nn.LSTM(28, 128, batch_first=True)` + `nn.Linear(128, 10)`

Each trains at params.yaml's batch size (128) with Adam 0.001 and reports, every `--every`
iterations, the cumulative training time (evaluation excluded) and, with `--accuracy`, the
test accuracy. `--seed` replaces params.yaml's seed. The peer with `--validate` also scores the
validation split (5,000 images) every `--every` iterations, as the train stage does, so its whole
run does the stage's work. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pipeline.data.files import load_arrays
from pipeline.params import config
from pipeline.training import tf_options


class Clock:
    """Training time only: paused while the contender evaluates."""

    def __init__(self) -> None:
        self.total, self.started = 0.0, None

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop(self) -> None:
        self.total += time.perf_counter() - self.started


def keras_checkpoints(build, params: config.Params, args, train, test) -> list[dict]:
    """Train a Keras model through pipeline.fitting.fit, timing the training steps only."""
    from pipeline.training import fitting

    clock, rows = fitting.StepClock(), []  # the train stage's own clock of its training steps

    def report(row: dict) -> None:
        rows.append({"iteration": int(row["iteration"]), "seconds": clock.training,
                     "accuracy": row["val_accuracy"]})  # fmt: skip

    update = {"iterations": args.iterations, "log_every": args.every}
    settings = config.TrainParams.model_validate(params.train.model_dump() | update)
    model = build(settings)
    check = test if args.accuracy else {"x": test["x"][:128], "y": test["y"][:128]}
    fitting.fit(model, train, check, settings, params.seed, report, callbacks=[clock])
    return rows


def project(params, args, train, test):
    tf_options.use_onednn(params.train.onednn)  # as pipeline.train does, before TensorFlow loads
    from pipeline.training import fitting, tf_runtime
    from pipeline.training.network import build_model

    def build(settings):  # as pipeline.train.run does it
        tf_runtime.configure_runtime(params.seed, settings)
        network = config.network(params.model, settings.iterations)
        return fitting.compile_trainer(build_model(network), settings)

    return keras_checkpoints(build, params, args, train, test)


def naive(params, args, train, test):
    import keras

    def build(settings):  # TensorFlow's default threads, no op determinism
        keras.utils.set_random_seed(params.seed)
        model = keras.Sequential([keras.Input((28, 28)), keras.layers.LSTM(128),
                                  keras.layers.Dense(10, activation="softmax")])  # fmt: skip
        model.compile(keras.optimizers.Adam(0.001), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])  # fmt: skip
        return model

    return keras_checkpoints(build, params, args, train, test)


def validate(lstm, head, loss_fn, val: dict) -> tuple[float, float]:
    """Loss and accuracy on the validation split, in batches of 1,000 as the stage scores it."""
    import torch

    x, y = torch.from_numpy(val["x"]), torch.from_numpy(val["y"].astype(np.int64))
    loss = correct = 0.0
    with torch.no_grad():
        for start in range(0, len(x), 1000):
            logits = head(lstm(x[start : start + 1000])[0][:, -1])
            loss += float(loss_fn(logits, y[start : start + 1000])) * len(logits)
            correct += float((logits.argmax(1) == y[start : start + 1000]).sum())
    return loss / len(x), correct / len(x)


def peer(params, args, train, test):
    import torch
    from torch import nn

    torch.manual_seed(params.seed)
    lstm, head = nn.LSTM(28, 128, batch_first=True), nn.Linear(128, 10)
    with torch.no_grad():  # the reference's forget bias 1.0 (gates i, f, g, o)
        lstm.bias_ih_l0[128:256].fill_(1.0)
        lstm.bias_hh_l0[128:256].fill_(0.0)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=0.001)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(train["x"]), torch.from_numpy(train["y"].astype(np.int64))
    x_test, y_test = torch.from_numpy(test["x"]), torch.from_numpy(test["y"].astype(np.int64))
    val = load_arrays(params.paths.split("val")) if args.validate else None
    generator = torch.Generator().manual_seed(params.seed)
    size = params.train.batch_size  # the same batches as the pipeline's
    order, position, clock, rows = torch.randperm(len(x), generator=generator), 0, Clock(), []
    clock.start()
    for iteration in range(1, args.iterations + 1):
        if position + size > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        batch = order[position : position + size]
        position += size
        output, _ = lstm(x[batch])
        loss = loss_fn(head(output[:, -1]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if iteration % args.every == 0:
            clock.stop()
            if args.validate:
                validate(lstm, head, loss_fn, val)
            accuracy = None
            if args.accuracy:
                with torch.no_grad():
                    logits = head(lstm(x_test)[0][:, -1])
                    accuracy = float((logits.argmax(1) == y_test).float().mean())
            rows.append({"iteration": iteration, "seconds": clock.total, "accuracy": accuracy})
            clock.start()
    return rows


CONTENDERS = {"project": project, "naive": naive, "peer": peer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(CONTENDERS))
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--accuracy", action="store_true", help="test accuracy at each check")
    parser.add_argument("--seed", type=int, help="instead of params.yaml's seed")
    parser.add_argument("--validate", action="store_true", help="peer: score val, as the stage")
    args = parser.parse_args()
    params = config.load_params()
    if args.seed is not None:
        params = params.model_copy(update={"seed": args.seed})
    train, test = (load_arrays(params.paths.split(split)) for split in ("train", "test"))
    rows = CONTENDERS[args.name](params, args, train, test)
    print(json.dumps({"contender": args.name, "checkpoints": rows}))  # noqa: T201


if __name__ == "__main__":
    main()
