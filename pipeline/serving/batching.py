"""Requests that arrive together are scored in one ONNX Runtime call, by a model that follows
its alias; past `serve.max_pending` waiting, refused, so the admitted ones wait a bounded time.

On an alias a child with MLflow (cache.py `--follow-seconds`) says in one line when it moved (the
files copied); the version is loaded off the event loop and swapped in between batches. A
registry that cannot be reached costs a warning, never the version being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import anyio
import numpy as np

import pipeline.params.config as config
from pipeline.inference import cache as model_cache
from pipeline.serving import asgi, loader
from pipeline.serving.loader import Predict, Served
from pipeline.tracking import registry

log = logging.getLogger(__name__)


# A batch of at most this many images is scored on the event loop: ONNX Runtime answers it in
# about the time a hop to the scoring thread and back costs (a future, a wake-up, the GIL handed
# over twice), so with one image per request the hop was most of the scoring's cost. A larger
# batch goes to the thread: the loop stays free to read and answer the other requests.
INLINE_IMAGES = 16


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
                if len(images) <= INLINE_IMAGES:
                    probabilities = model.predict(images)
                else:
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


async def follow(batcher: Batcher, monitoring: asgi.Monitoring, params: config.Params) -> None:
    """Run the watching child until cancelled; swap in each version the alias moves to."""
    model = batcher.model.served.model
    command = model_cache.follow_command(model, params, params.serve.follow_seconds)
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    try:
        async for line in child.stdout:  # a line only when the answer changed
            answer, serving = json.loads(line), batcher.model.served.pinned
            if "error" in answer:
                log.warning("following %s: %s; still serving %s", model, answer["error"], serving)
            elif answer["pinned"] != serving:
                await swap(batcher, monitoring, params, Served(model, **answer))
    finally:
        if child.returncode is None:
            child.terminate()
            await child.wait()


async def swap(
    batcher: Batcher, monitoring: asgi.Monitoring, params: config.Params, after: Served
) -> None:
    """Score the batches after the one in flight with `after`, unless it cannot be loaded."""
    before = batcher.model.served
    try:
        predict = await anyio.to_thread.run_sync(loader.load, after, params)
    except loader.ModelError as error:
        log.warning("%s moved to %s, which cannot be served (%s); still serving %s",
                    after.model, after.pinned, error, before.pinned)  # fmt: skip
        return
    batcher.model = Model(after, monitoring.watched(predict, after.pinned))
    monitoring.metrics.serving(before, after)  # model_info names the new version
    log.info("%s moved: serving %s (was %s)", after.model, after.pinned, before.pinned)


def monitored_batcher(
    app_name: str, model: str | Served, params: config.Params, shadow: str | Served | None
) -> tuple[asgi.Monitoring, Batcher]:
    """A server's monitoring and its one batcher, which follows the alias if it is on one."""
    served = loader.locate(model, params)
    monitoring = asgi.Monitoring(app_name, served, params, shadow)
    predict = monitoring.watched(loader.load(served, params))
    settings = params.serve
    batcher = Batcher(
        Model(served, predict), settings.batch_wait_ms, settings.max_batch, settings.max_pending
    )
    monitoring.closing.append(batcher.close)
    alias = registry.REGISTERED_URI.match(served.model)
    if settings.follow_seconds and alias and alias["alias"]:
        monitoring.background.append(functools.partial(follow, batcher, monitoring, params))
    return monitoring, batcher
