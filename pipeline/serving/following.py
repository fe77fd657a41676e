"""A server started on an alias (`models:/name@champion`) follows it while it runs.

A child with MLflow (pipeline/inference/cache.py `--follow-seconds`) asks the registry every
`serve.follow_seconds` and says in one line when the alias moved (the files copied); the server
loads the version off the event loop and swaps it in between batches. A registry that cannot
be reached costs a warning, never the version being served.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

import pipeline.params.config as config
from pipeline.inference import cache as model_cache
from pipeline.serving import batching, loader
from pipeline.serving.loader import Served
from pipeline.tracking import registry

if TYPE_CHECKING:
    from pipeline.serving.asgi import Monitoring

log = logging.getLogger(__name__)


def follows(served: Served) -> bool:
    """Only a registered model named by an alias can move; a version or a file never does."""
    match = registry.REGISTERED_URI.match(served.model)
    return bool(match and match["alias"])


async def follow(
    served: Served,
    params: config.Params,
    seconds: float,
    move: Callable[[Served], Awaitable[None]],
) -> None:
    """Run the watching child until cancelled; `move(new)` each time the alias moves."""
    command = model_cache.follow_command(served.model, params, seconds)
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    current, problem = served.pinned, None
    try:
        async for line in child.stdout:
            answer = json.loads(line)
            if "error" in answer:
                if answer["error"] != problem:
                    log.warning("following %s: %s; still serving %s", served.model,
                                answer["error"], current)  # fmt: skip
                problem = answer["error"]
                continue
            problem = None
            if answer["pinned"] != current:
                await move(Served(served.model, answer["pinned"], answer["path"], answer["sha256"]))
                current = answer["pinned"]
    finally:
        if child.returncode is None:
            child.terminate()
            await child.wait()


def keep_following(
    batcher: batching.Batcher, monitoring: Monitoring, params: config.Params
) -> Callable[[], Awaitable[None]]:
    """The task that keeps `batcher` on the version its alias names."""

    async def move(after: Served) -> None:
        before = batcher.model.served
        try:
            predict = await anyio.to_thread.run_sync(loader.load, after, params)
        except loader.ModelError as error:
            log.warning("%s moved to %s, which cannot be served (%s); still serving %s",
                        after.model, after.pinned, error, before.pinned)  # fmt: skip
            return
        batcher.swap(batching.Model(after, monitoring.watched(predict, after.pinned)))
        monitoring.metrics.serving(before, after)  # model_info names the new version
        log.info("%s moved: serving %s (was %s)", after.model, after.pinned, before.pinned)

    served = batcher.model.served
    return lambda: follow(served, params, params.serve.follow_seconds, move)


def batcher_for(
    served: Served, monitoring: Monitoring, predict: loader.Predict, params: config.Params
) -> batching.Batcher:
    """A server's one batcher (serve.* settings), which follows the alias if it is on one."""
    settings = params.serve
    batcher = batching.Batcher(batching.Model(served, predict), settings.batch_wait_ms,
                               settings.max_batch, settings.max_pending)  # fmt: skip
    monitoring.closing.append(batcher.close)
    if settings.follow_seconds and follows(served):
        monitoring.background.append(keep_following(batcher, monitoring, params))
    return batcher
