"""A server's one batcher, which follows its alias (`models:/name@champion`) while it runs.

A child with MLflow (pipeline/inference/cache.py `--follow-seconds`) asks the registry every
`serve.follow_seconds` and says in one line when the alias moved (the files copied); the server
loads the version off the event loop and swaps it in between batches. A registry that cannot
be reached costs a warning, never the version being served.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging

import anyio

import pipeline.params.config as config
from pipeline.inference import cache as model_cache
from pipeline.serving import asgi, batching, loader
from pipeline.serving.loader import Served
from pipeline.tracking import registry

log = logging.getLogger(__name__)


async def follow(
    batcher: batching.Batcher, monitoring: asgi.Monitoring, params: config.Params
) -> None:
    """Run the watching child until cancelled; swap in each version the alias moves to."""
    model = batcher.model.served.model
    command = model_cache.follow_command(model, params, params.serve.follow_seconds)
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    problem = None
    try:
        async for line in child.stdout:
            answer, serving = json.loads(line), batcher.model.served.pinned
            if "error" not in answer:
                problem = None
                if answer["pinned"] != serving:
                    after = Served(model, answer["pinned"], answer["path"], answer["sha256"])
                    await swap(batcher, monitoring, params, after)
            elif answer["error"] != problem:
                log.warning("following %s: %s; still serving %s", model, answer["error"], serving)
                problem = answer["error"]
    finally:
        if child.returncode is None:
            child.terminate()
            await child.wait()


async def swap(
    batcher: batching.Batcher, monitoring: asgi.Monitoring, params: config.Params, after: Served
) -> None:
    """Score the batches after the one in flight with `after`, unless it cannot be loaded."""
    before = batcher.model.served
    try:
        predict = await anyio.to_thread.run_sync(loader.load, after, params)
    except loader.ModelError as error:
        log.warning("%s moved to %s, which cannot be served (%s); still serving %s",
                    after.model, after.pinned, error, before.pinned)  # fmt: skip
        return
    batcher.model = batching.Model(after, monitoring.watched(predict, after.pinned))
    monitoring.metrics.serving(before, after)  # model_info names the new version
    log.info("%s moved: serving %s (was %s)", after.model, after.pinned, before.pinned)


def monitored_batcher(
    app_name: str, model: str | Served, params: config.Params, shadow: str | Served | None
) -> tuple[asgi.Monitoring, batching.Batcher]:
    """A server's monitoring and its one batcher (serve.* settings), which records what it
    scores and follows the alias if it is on one (a version or a file never moves)."""
    served = loader.locate(model, params)
    monitoring = asgi.Monitoring(app_name, served, params, shadow)
    predict = monitoring.watched(loader.load(served, params))
    settings = params.serve
    batcher = batching.Batcher(batching.Model(served, predict), settings.batch_wait_ms,
                               settings.max_batch, settings.max_pending)  # fmt: skip
    monitoring.closing.append(batcher.close)
    alias = registry.REGISTERED_URI.match(served.model)
    if settings.follow_seconds and alias and alias["alias"]:
        monitoring.background.append(functools.partial(follow, batcher, monitoring, params))
    return monitoring, batcher
