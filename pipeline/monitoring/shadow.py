"""A shadow model: scored beside the served one on every request, off the request path.

The server answers with its own model alone. Each scored batch is queued (bounded: past
SHADOW_QUEUE batches waiting, a batch goes unscored by the shadow, counted) for one background
thread that runs the shadow on it and hands both answers on, to be counted and logged
together. The shadow's work never delays an answer and cannot fail one; it does share the
machine's cores with the served model.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable

import numpy as np

from pipeline.monitoring.prediction_log import Scored, ShadowScored

log = logging.getLogger(__name__)

SHADOW_QUEUE = 64  # batches waiting for the shadow (each holds its images)
CLOSE = object()

Predict = Callable[[np.ndarray], np.ndarray]  # images (n, 28, 28) → probabilities (n, classes)
Deliver = Callable[[Scored, ShadowScored | None], None]


class Shadow:
    """The shadow model `version` (its `predict`), on a thread of its own."""

    def __init__(self, version: str, predict: Predict, deliver: Deliver) -> None:
        self.version, self.predict, self.deliver = version, predict, deliver
        self.queue: queue.Queue = queue.Queue(SHADOW_QUEUE)
        self.failing = False
        self.thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self.thread.start()

    def submit(self, images: np.ndarray, scored: Scored) -> bool:
        """Queue the images the served model scored; False, at once, when the queue is full."""
        try:
            self.queue.put_nowait((images, scored))
        except queue.Full:
            return False
        return True

    def close(self, timeout: float = 10) -> None:
        """Score what is queued, then stop (within about `timeout` seconds)."""
        with contextlib.suppress(queue.Full):
            self.queue.put(CLOSE, timeout=timeout)
        self.thread.join(timeout)

    def _run(self) -> None:
        while (item := self.queue.get()) is not CLOSE:
            images, scored = item
            try:
                probabilities = self.predict(images)
            except Exception as error:  # the shadow's failure is its own: the answer is sent
                if not self.failing:
                    log.warning(
                        "shadow %s failed (%s); its predictions are missing from the "
                        "log until it scores again",
                        self.version,
                        error,
                    )
                self.failing = True
                self.deliver(scored, None)
                continue
            self.failing = False
            shadowed = ShadowScored(
                self.version, probabilities.argmax(axis=1), probabilities.max(axis=1)
            )
            self.deliver(scored, shadowed)
