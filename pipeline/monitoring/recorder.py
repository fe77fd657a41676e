"""What a server does with each batch it scored: count it, log it, have the shadow score it.

`Recorder.record` runs on the request's worker thread after the model answered; it computes
the images' statistics (vectorised, a few sums) and only queues the rest: the log's writer and
the shadow have threads of their own. It never raises: a fault in monitoring costs one
warning, not an answer.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.monitoring.metrics import ServerMetrics
from pipeline.monitoring.prediction_log import PredictionLog, Scored, ShadowScored
from pipeline.monitoring.shadow import Predict, Shadow

log = logging.getLogger(__name__)


class Recorder:
    """One server process's monitoring of what it scores."""

    def __init__(
        self,
        metrics: ServerMetrics,
        prediction_log: PredictionLog | None,
        shadow: tuple[str, Predict] | None,
        keep_pixels: bool,
    ) -> None:
        self.metrics, self.prediction_log, self.keep_pixels = metrics, prediction_log, keep_pixels
        self.shadow = Shadow(*shadow, self._shadowed) if shadow else None
        self.failed = False

    def record(self, images: np.ndarray, probabilities: np.ndarray, model: str = "") -> None:
        """images float32 (n, 28, 28) and the served model's probabilities (n, classes), which
        `model` gave ("": the one the server started with)."""
        try:
            if self.prediction_log is None and self.shadow is None:
                self.metrics.count_predictions(probabilities.argmax(axis=1))
                return
            scored = Scored.of(images, probabilities, self.keep_pixels, model)
            self.metrics.count_predictions(scored.predicted)
            if self.shadow is None:
                self._log(scored, None)
            elif not self.shadow.submit(images, scored):
                self.metrics.shadow_dropped.inc(len(images))
                self._log(scored, None)
        except Exception:  # monitoring never costs an answer
            if not self.failed:
                log.exception("recording a prediction failed (reported once)")
            self.failed = True

    def close(self) -> None:
        """Let the shadow and the log finish what is queued."""
        if self.shadow is not None:
            self.shadow.close()
        if self.prediction_log is not None:
            self.prediction_log.close()

    def _shadowed(self, scored: Scored, shadow: ShadowScored | None) -> None:
        if shadow is not None:
            self.metrics.count_shadow(scored.predicted, shadow.predicted)
        self._log(scored, shadow)

    def _log(self, scored: Scored, shadow: ShadowScored | None) -> None:
        if self.prediction_log is not None:
            self.prediction_log.write(scored, shadow)
