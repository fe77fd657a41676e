"""The training itself, in a process of its own: TensorFlow's import, the fit and the export.

Importing TensorFlow and importing MLflow with its store each hold the GIL for seconds: in one
process they queue, in two they share the cores. The train stage starts this process first
(`python -m pipeline.training.trainer`) and starts its MLflow run meanwhile; it logs the
interval metrics this process sends back as the run's live curves, then the files it wrote.

Protocol: the stage writes the pickled (params, workers) to the process's stdin, and a line
"go" once its store has answered (EOF instead: the process ends without training, so a store that
cannot be reached still fails the stage before any training or output); the process answers on
its stdout with pickled ("row", interval metrics) while it fits, ("fitted", None)
when the fit is done, then ("done", Trained) or ("error", the exception). Its stdout carries
those alone: what anything else would print goes to stderr, with its log.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pipeline.params.config as config
import pipeline.runtime.cli as cli
import pipeline.training.cluster as cluster
import pipeline.training.onnx_export as onnx_export
import pipeline.training.tf_options as tf_options
from pipeline.data.files import Arrays, atomic_path, load_arrays, sha256_file
from pipeline.inference import integrity
from pipeline.tracking import lineage

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float]], None]  # one interval's metrics, as they come
# Errors the stage turns into one line; any other is a defect, logged here with its traceback.
EXPECTED = (cluster.DistributionError, onnx_export.ExportError)
STOP_SECONDS = 10  # SIGTERM, then SIGKILL: a training that fails or is interrupted


class Stopped(Exception):
    """The stage said no "go" (its store did not answer): nothing trained, nothing written."""


class TrainingError(RuntimeError):
    """The training process ended without an answer (killed, out of memory)."""


@dataclass(frozen=True)
class Trained:
    """What the training gave the stage to log: the runtime's and the model's tags (threads,
    the ONNX check, the file's and the weights' hashes) and the seconds Keras's hooks counted."""

    tags: dict[str, str]
    seconds: dict[str, float]  # "training" (steps, tracing included), "validation"


def prepare_training(params: config.Params, workers: cluster.Cluster | None):
    """Set up TensorFlow and the network; return a function (train, val, report) → (model,
    seconds) and the runtime's tags.

    One process: the network is built here, before anything else draws from the seeded
    generators. Several workers: the returned function joins the cluster, and
    `distributed.fit` builds the same network in the strategy's scope.
    """
    tf_options.use_onednn(params.train.onednn)
    with cli.first_import("tensorflow"):
        import pipeline.training.tf_runtime as tf_runtime  # TensorFlow loads once options are set

    runtime = tf_runtime.configure_runtime(params.seed, params.train)
    network = params.network()  # `unroll: auto` settled
    runtime["model.unrolled"] = str(network.unroll).lower()
    if workers is None:
        import pipeline.training.fitting as fitting
        from pipeline.training.network import build_model

        model = build_model(network)
        trainer = fitting.compile_trainer(model, params.train)

        def train_model(train: Arrays, val: Arrays, report: Report) -> tuple[object, dict]:
            clock = fitting.fit(trainer, train, val, params.train, params.seed, report)
            return model, {"training": clock.training, "validation": clock.validation}

        return train_model, runtime
    import pipeline.training.distributed as distributed

    def train_distributed(train: Arrays, val: Arrays, report: Report) -> tuple[object, dict]:
        # Joined only now: the others wait for the chief's MLflow set-up while registering
        # with the cluster (no deadline), never inside a collective (which has one).
        strategy = distributed.make_strategy()
        model = distributed.fit(strategy, network, train, val, params.train, params.seed, report)
        return model, {}

    return train_distributed, runtime | {"train.workers": str(workers.workers)}


def prepared(params: config.Params, workers: cluster.Cluster | None):
    """`prepare_training`'s function and tags, then the splits. Read after TensorFlow's import,
    not in a thread beside it: numpy reads an .npz member in small chunks that take the GIL,
    which slowed the import by more than the read costs."""
    train_model, runtime = prepare_training(params, workers)
    train, val = (load_arrays(params.paths.split(split)) for split in ("train", "val"))
    return train, val, train_model, runtime


def train_and_export(
    params: config.Params,
    workers: cluster.Cluster | None,
    report: Report,
    fitted: Callable[[], None],
    go: Callable[[], bool],
) -> Trained:
    """Train; save the .keras file and its checked ONNX export (DVC outputs)."""
    train, val, train_model, runtime = prepared(params, workers)
    if not go():
        raise Stopped
    model, seconds = train_model(train, val, report)
    # The fit's dataset iterator is garbage now, in reference cycles. Collected, its destructor
    # frees the shuffle buffer (the whole training split) and waits for tf.data's threads to
    # stop: a second or more with the GIL held, wherever a collection starts (in the export,
    # here). This process ends without a teardown (cli.exit_now): frozen, it is never collected.
    gc.freeze()
    fitted()
    with atomic_path(params.paths.model, ".keras") as temporary:  # complete, or not there
        model.save(temporary)
    images = val["x"][: onnx_export.CHECK_IMAGES]
    difference = onnx_export.export_checked(model, params.paths.onnx_model, images)
    tags = {
        "onnx.largest_difference": f"{difference:.3g}",
        integrity.HASH_TAG: sha256_file(params.paths.onnx_model),  # what every load checks
        lineage.WEIGHTS_TAG: lineage.weights_sha256(model.get_weights()),
    }
    return Trained(runtime | tags, seconds)


def fit_as_worker(params: config.Params, workers: cluster.Cluster) -> None:
    """A non-chief worker: train its share of each batch, in this process; no files."""
    train, val, train_model, _ = prepared(params, workers)
    train_model(train, val, lambda row: None)


class Training:
    """The stage's side: the process, started at once; `result` hands over its rows as they
    come and returns what it trained, or raises what it raised."""

    def __init__(self, params: config.Params, workers: cluster.Cluster | None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.process.stdin.write(pickle.dumps((params, workers)))
        self.process.stdin.flush()
        self.answered = False

    def go(self) -> None:
        """Let the fit begin (the store has answered)."""
        self.process.stdin.write(b"go\n")
        self.process.stdin.close()

    def result(self, report: Report, fitted: Callable[[], None]) -> Trained:
        while True:
            try:
                kind, value = pickle.load(self.process.stdout)
            except EOFError:
                code = self.process.wait()
                raise TrainingError(
                    f"the training process ended with no result (exit {code})"
                ) from None
            if kind == "row":
                report(value)
            elif kind == "fitted":
                fitted()
            elif kind == "error":
                raise value
            else:
                self.answered = True
                return value

    def stop(self) -> None:
        """Wait for a process that answered; stop one that did not (an error, an interrupt)."""
        if self.answered:
            self.process.wait()
        elif self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):  # a pipe to a process gone
                stream.close()


@contextlib.contextmanager
def training(params: config.Params, workers: cluster.Cluster | None) -> Iterator[Training]:
    """A training process for the whole block; stopped when the block leaves early."""
    started = Training(params, workers)
    try:
        yield started
    finally:
        started.stop()


def answer(requests: BinaryIO, replies: BinaryIO) -> None:
    """The training process's work: one request, its rows, and its result or error."""
    params, workers = pickle.load(requests)

    def send(kind: str, value: object) -> None:
        replies.write(pickle.dumps((kind, value)))
        replies.flush()

    try:
        trained = train_and_export(
            params,
            workers,
            lambda row: send("row", row),
            lambda: send("fitted", None),
            lambda: requests.readline().strip() == b"go",
        )
    except Stopped:
        return
    except Exception as error:  # noqa: BLE001  handed to the stage, which raises it
        if not isinstance(error, EXPECTED):
            log.exception("training failed")
        try:
            send("error", error)
        except (pickle.PicklingError, TypeError, AttributeError):
            send("error", TrainingError(f"{type(error).__name__}: {error}"))
        return
    send("done", trained)


def main() -> None:
    """The training process's main: one request answered on the saved stdout, then exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the stage's: it stops this one
    tf_options.without_unused_libraries()
    cli.setup_logging()
    answers = os.fdopen(os.dup(1), "wb")  # stdout carries the answers alone; fd 1 → stderr, so
    os.dup2(2, 1)  # that nothing else (a C++ library's line) can land among them
    answer(sys.stdin.buffer, answers)
    answers.close()
    cli.exit_now()


if __name__ == "__main__":
    # By its name, not as __main__: what it pickles (Trained, TrainingError) must be found
    # under the name the stage knows it by.
    from pipeline.training.trainer import main as main_by_name

    main_by_name()
