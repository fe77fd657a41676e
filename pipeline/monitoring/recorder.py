"""What a server does with each batch it scored: count it, log it, have a shadow model score it.

`record` runs on the request's thread after the answer: a few sums, the rest queued. The shadow
scores on a thread of its own; past SHADOW_QUEUE waiting batches it skips one, counted. Nothing
here raises: a fault in monitoring costs a warning, never an answer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.monitoring.metrics import ServerMetrics
from pipeline.monitoring.prediction_log import PredictionLog, Scored

log = logging.getLogger(__name__)

SHADOW_QUEUE = 64  # batches waiting for the shadow (each holds its images)
Predict = Callable[[np.ndarray], np.ndarray]  # images (n, 28, 28) → probabilities (n, classes)


class Recorder:
    """One server process's monitoring of what it scores; `shadow` is (its version, predict)."""

    def __init__(
        self,
        metrics: ServerMetrics,
        prediction_log: PredictionLog | None,
        shadow: tuple[str, Predict] | None,
        keep_pixels: bool,
    ) -> None:
        self.metrics, self.prediction_log, self.keep_pixels = metrics, prediction_log, keep_pixels
        self.shadow = shadow
        self.shadow_thread = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self.shadow_slots = threading.BoundedSemaphore(SHADOW_QUEUE)
        self.failed = self.shadow_failing = False

    def record(self, images: np.ndarray, probabilities: np.ndarray, model: str = "") -> None:
        """images float32 (n, 28, 28) and the probabilities (n, classes) `model` gave."""
        try:
            if self.prediction_log is None and self.shadow is None:
                self.metrics.count_predictions(probabilities.argmax(axis=1))
                return
            scored = Scored.of(images, probabilities, self.keep_pixels, model)
            self.metrics.count_predictions(scored.predicted)
            if self.shadow is not None and self.shadow_slots.acquire(blocking=False):
                self.shadow_thread.submit(self._shadowed, images, scored)
                return
            if self.shadow is not None:
                self.metrics.shadow_dropped.inc(len(images))
            self._log(scored)
        except Exception:  # monitoring never costs an answer
            if not self.failed:
                log.exception("recording a prediction failed (reported once)")
            self.failed = True

    def close(self) -> None:
        """Let the shadow and the log finish what is queued."""
        self.shadow_thread.shutdown(wait=True)
        if self.prediction_log is not None:
            self.prediction_log.close()

    def _shadowed(self, images: np.ndarray, scored: Scored) -> None:
        version, predict = self.shadow
        try:
            probabilities = predict(images)
        except Exception as error:  # the shadow's failure is its own: the answer was sent
            if not self.shadow_failing:
                why = "its predictions are missing from the log until it scores again"
                log.warning("shadow %s failed (%s); %s", version, error, why)
            self.shadow_failing = True
            self._log(scored)
            return
        finally:
            self.shadow_slots.release()
        self.shadow_failing = False
        predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
        self.metrics.count_shadow(scored.predicted, predicted)
        shadow = (version, predicted.tolist(), confidence.tolist())
        self._log(dataclasses.replace(scored, shadow=shadow))

    def _log(self, scored: Scored) -> None:
        if self.prediction_log is not None:
            self.prediction_log.write(scored)
