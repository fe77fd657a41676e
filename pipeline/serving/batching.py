"""Requests that arrive together are scored in one ONNX Runtime call; past a limit, refused.

While one batch is scored on the scoring thread the next gathers, so batches grow with the load
(docs/serving.md, "Under load"); refusing past `serve.max_pending` keeps every admitted
request's wait bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.serving.loader import Predict, Served


class Overloaded(Exception):
    """As many requests as the server admits are waiting; the message says how many."""


@dataclass(frozen=True)
class Model:
    served: Served
    predict: Predict  # float32 (n, 28, 28) → probabilities (n, classes)


@dataclass
class Request:
    images: np.ndarray  # float32 (n, 28, 28), already checked
    answer: asyncio.Future  # → (probabilities (n, classes), the Model that scored them)


class Batcher:
    """The one queue of a server process and the task that scores it in batches."""

    def __init__(self, model: Model, wait_ms: float, max_batch: int, max_pending: int) -> None:
        self.model = model  # swapped whole between batches
        self.wait_s, self.max_batch, self.max_pending = wait_ms / 1000, max_batch, max_pending
        self.pending = 0  # admitted, not yet answered
        self.queue: asyncio.Queue[Request] | None = None  # made on the loop, at the first request
        self.task: asyncio.Task | None = None
        self.scorer = ThreadPoolExecutor(1, thread_name_prefix="scoring")

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """A request's whole stay, body included; Overloaded at once when max_pending are in."""
        if self.pending >= self.max_pending:
            raise Overloaded(
                f"{self.pending} requests waiting, the most admitted (serve.max_pending)"
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def score(self, images: np.ndarray) -> tuple[np.ndarray, Model]:
        """The probabilities of `images` (of an admitted request) and the model that gave them."""
        if self.task is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self.run())
        request = Request(images, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(request)
        return await request.answer

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.gather()
            model = self.model  # one model for the whole batch
            images = (
                batch[0].images if len(batch) == 1 else np.concatenate([r.images for r in batch])
            )
            try:
                probabilities = await loop.run_in_executor(self.scorer, model.predict, images)
            except Exception as error:  # the model's own failure: each request gets it
                for request in batch:
                    if not request.answer.done():
                        request.answer.set_exception(error)
                continue
            start = 0
            for request in batch:
                rows = probabilities[start : start + len(request.images)]
                start += len(request.images)
                if not request.answer.done():  # its client may have gone
                    request.answer.set_result((rows, model))

    async def gather(self) -> list[Request]:
        """The requests queued now, and those arriving within the wait, up to max_batch images."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        size, deadline = len(batch[0].images), loop.time() + self.wait_s
        while size < self.max_batch:
            try:
                request = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(request)
            size += len(request.images)
        return batch

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.scorer.shutdown(wait=True)
