"""TensorFlow's runtime for one training: thread pools, seeds, op determinism, set before its
first op; the same for the one-process and the multi-worker trainer."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

import pipeline.params.config as config
import pipeline.runtime.processes as processes

log = logging.getLogger(__name__)

TRAIN_MODULE = "pipeline.train"  # `python -m pipeline.train`, as DVC runs the stage


def other_trainings() -> list[int]:
    """Pids of the other `python -m pipeline.train` processes on this machine."""
    return processes.processes(
        lambda cmdline, environ: processes.runs_module(cmdline, TRAIN_MODULE)
    )


def thread_counts(settings: config.TrainParams, others: int = 0) -> tuple[int, int]:
    """(intra-op, inter-op) threads; intra 0 means one share of the CPU cores per batch shard.

    With `others` trainings running beside this one (`dvc queue start -j 2`, workers of a
    search), inter-op 0 becomes the cores' share of this training, so that together they do not
    oversubscribe the cores. Only the number of ops at once changes, never the threads within an
    op: inter-op threads schedule independent ops, so the arithmetic, and the weights, stay the
    same as when training alone.
    """
    cores = processes.usable_cores()
    intra = settings.intra_op_threads or max(1, cores // settings.batch_shards)
    inter = settings.inter_op_threads
    if inter == 0 and others:
        inter = max(1, cores // ((others + 1) * intra))
    return intra, inter


def configure_runtime(seed: int, settings: config.TrainParams) -> dict[str, str]:
    """Thread pools, seeds and op determinism; call before TensorFlow runs its first op.

    Returns the thread counts in effect, as tags for the run (they decide summation order).
    """
    others = len(other_trainings())
    intra, inter = thread_counts(settings, others)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)  # 0: TensorFlow's default
        log.info(
            "TensorFlow threads: %d per op, %s ops at once; %d batch shards%s",
            intra,
            inter or "default",
            settings.batch_shards,
            f"; {others} other training(s) on this machine" if others else "",
        )
    except RuntimeError:  # TensorFlow already ran in this process (a notebook, a test)
        log.warning(
            "TensorFlow is already running in this process: its thread pools stay as "
            "they are, not intra-op %d / inter-op %d",
            intra,
            inter,
        )
    keras.utils.set_random_seed(seed)
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    threading = tf.config.threading
    return {
        "tensorflow.intra_op_threads": str(threading.get_intra_op_parallelism_threads()),
        "tensorflow.inter_op_threads": str(threading.get_inter_op_parallelism_threads()),
        "tensorflow.onednn": onednn_in_use(),
    }


def onednn_in_use() -> str:
    """Whether TensorFlow runs its oneDNN kernels in this process: "true" or "false"."""
    # private: no public API says it. tf.sysconfig.get_build_info() and tf.test.is_built_with_*
    # name CUDA, ROCm, TensorRT and XLA, not oneDNN, and TF_ENABLE_ONEDNN_OPTS unset leaves
    # the choice to the build. TensorFlow's own tests ask this module.
    try:
        from tensorflow.python.util import _pywrap_util_port

        return str(bool(_pywrap_util_port.IsMklEnabled())).lower()
    except (ImportError, AttributeError):
        return "unknown"
