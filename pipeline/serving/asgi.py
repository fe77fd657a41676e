"""What the REST server and the demo page share: their 4xx, worker threads, a body limit, their
monitoring, uvicorn. With `workers` > 1 each process builds its app in `app_from_environment`,
on the version pinned before they start, with its share of the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

import pipeline.params.tools as tools
from pipeline.inference import onnx_network
from pipeline.monitoring import metrics as server_metrics
from pipeline.monitoring.prediction_log import PredictionLog
from pipeline.monitoring.recorder import Recorder
from pipeline.runtime.cli import setup_logging
from pipeline.runtime.processes import usable_cores
from pipeline.serving import loader
from pipeline.serving.loader import Predict, Served

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]
DRAIN_FACTOR = 4  # an oversized body up to this many times the limit is read before the 413


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    """A 4xx as MLflow's scoring server shapes it: `{"error_code", "message"}` in JSON."""
    body = orjson.dumps({"error_code": code, "message": message})
    return Response(body, status, headers, media_type="application/json")


class BadRequest(ValueError):
    """A request a server refuses: its HTTP status, MLflow's error code and one line saying why."""

    def __init__(self, message: str, status: int = 400, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def response(self) -> Response:
        return error_response(self.status, self.code, str(self))


def json_body(body: bytes) -> object:
    """A request body as JSON (orjson: several times faster on pixels), or BadRequest. What
    orjson refuses json tries too: it reads NaN and Infinity, which the pixel checks name."""
    with contextlib.suppress(orjson.JSONDecodeError):
        return orjson.loads(body)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None


def worker_threads() -> Callable[..., Awaitable[Any]]:
    """`await run(work, *args)`: an app's blocking work on worker threads, at most one per usable
    core, never on the event loop, so a slow request holds up only those queued behind it."""
    limiter = anyio.CapacityLimiter(usable_cores())
    return functools.partial(anyio.to_thread.run_sync, limiter=limiter)


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 and one line, before it is parsed. Up to
    DRAIN_FACTOR times the limit it is read and dropped first, as clients such as urllib send the
    whole body before they read an answer (else they see a broken pipe, not the 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            continues = headers.get(b"expect", b"").lower() == b"100-continue"  # sent nothing yet
            if int(declared) <= self.max_bytes * DRAIN_FACTOR and not continues:
                await discard(receive, self.max_bytes * DRAIN_FACTOR)
            return await self.refuse(scope, receive, send)
        chunks, size = [], 0
        while True:  # read the body once, counting, and hand the app a replay of it
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # e.g. the client disconnected
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                if message.get("more_body"):
                    await discard(receive, self.max_bytes * DRAIN_FACTOR - size)
                return await self.refuse(scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body over {self.max_bytes} bytes; send fewer images per request"
        await error_response(413, "REQUEST_TOO_LARGE", message)(scope, receive, send)


async def discard(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body, at most `budget` bytes of it."""
    while budget > 0:
        message = await receive()
        budget -= len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


class Monitoring:
    """A server's monitoring: its metrics, the prediction log and the shadow model, if any."""

    def __init__(self, app_name: str, served: Served, params: tools.ToolParams,
                 shadow: str | Served | None = None) -> None:  # fmt: skip
        settings = params.monitor
        self.shadow = loader.locate(shadow, params) if shadow else None
        self.metrics = server_metrics.ServerMetrics(
            params.data.class_names, served.model, served.pinned,
            self.shadow.pinned if self.shadow else "",
        )  # fmt: skip
        prediction_log = None
        if settings.log:
            prediction_log = PredictionLog(
                settings.log_path, app_name, served.pinned, settings.log_max_bytes,
                self.metrics.log_dropped.inc,
            )  # fmt: skip
        shadowing = (self.shadow.pinned, loader.load(self.shadow, params)) if self.shadow else None
        self.recorder = Recorder(self.metrics, prediction_log, shadowing, settings.log_pixels)
        self.background: list[Callable[[], Awaitable[None]]] = []  # run while the app serves
        self.closing: list[Callable[[], Awaitable[None]]] = []  # the app's own, at shutdown

    def watched(self, predict: Predict, model: str = "") -> Predict:
        """`predict`, recording each batch it scores as `model`'s."""

        def scored(images: np.ndarray) -> np.ndarray:  # (n, 28, 28) float32, checked by its server
            probabilities = predict(images)
            self.recorder.record(images, probabilities, model)
            return probabilities

        return scored

    def shed(self, error: Exception) -> Response:
        """A request refused for load (batching.Overloaded): counted, a 503 to retry later."""
        self.metrics.shed.inc()
        return error_response(503, "TEMPORARILY_UNAVAILABLE", str(error), {"Retry-After": "1"})

    def app(self, routes: list[BaseRoute], hot: dict[str, Endpoint] | None = None) -> Starlette:
        """The app of `routes`, its `hot` POST routes (path → endpoint) answered by HotRoutes."""
        app = Starlette(routes=routes, lifespan=self.lifespan)
        app.state.monitoring, app.state.hot = self, hot or {}
        return app

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):  # on stop, the log and the shadow finish queues
        tasks = [asyncio.create_task(work()) for work in self.background]
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for close in self.closing:
            await close()
        await anyio.to_thread.run_sync(self.recorder.close)


class HotRoutes:
    """ASGI middleware: a POST to one of a few exact paths, its declared body within the limit,
    goes straight to its endpoint, with Starlette's own Request and Response, and is counted and
    timed here. It skips Starlette's router and exception layers, the body limit's re-reading
    and the metrics' wrapping of each message, which together cost the event loop more than
    scoring one image. Anything else goes to `app`: those layers, which refuse a large body."""

    def __init__(
        self,
        app: ASGIApp,
        endpoints: dict[str, Endpoint],
        max_bytes: int,
        metrics: server_metrics.ServerMetrics | None,
    ) -> None:
        self.app, self.endpoints, self.max_bytes, self.metrics = app, endpoints, max_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoint(scope)
        if endpoint is None:
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500
        try:
            try:
                response = await endpoint(Request(scope, receive))
            except Exception:  # as Starlette's ServerErrorMiddleware would: logged, a bare 500
                log.exception("%s failed", scope["path"])
                response = PlainTextResponse("Internal Server Error", 500)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            if self.metrics is not None:
                self.metrics.answered(scope["path"], status, time.perf_counter() - started)

    def endpoint(self, scope: Scope) -> Endpoint | None:
        """The endpoint of a hot POST whose Content-Length is at most max_bytes: the body ends
        there (HTTP's framing, which the server's parser enforces), so nothing need count it."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        endpoint = self.endpoints.get(scope["path"])
        if endpoint is None:
            return None
        declared = next((value for name, value in scope["headers"] if name == b"content-length"),
                        b"")  # fmt: skip
        return endpoint if declared.isdigit() and int(declared) <= self.max_bytes else None


APP_ENV = "PIPELINE_SERVE_APP"  # what each worker process builds: module, models, params file


def build(module: str, model: str | Served, params_file: str, shadow: str | Served | None = None):
    """`module.build_app(model, params, shadow)` in the body limit, in its request metrics;
    its hot routes past both (HotRoutes)."""
    params = tools.load_params(params_file)
    app = importlib.import_module(module).build_app(model, params, shadow)
    max_bytes = params.serve.max_body_bytes
    monitoring = getattr(app.state, "monitoring", None)  # None: an app that keeps no metrics
    metrics = monitoring.metrics if monitoring else None
    rest = BodyLimit(app, max_bytes)
    if metrics is not None:
        rest = metrics.middleware(rest, [route.path for route in app.routes])
    return HotRoutes(rest, getattr(app.state, "hot", {}), max_bytes, metrics)


def app_from_environment():
    """The app of one worker process (uvicorn's factory), as the supervisor described it."""
    setup_logging()
    spec = json.loads(os.environ[APP_ENV])
    shadow = Served(**spec["shadow"]) if spec["shadow"] else None
    return build(spec["module"], Served(**spec["model"]), spec["params_file"], shadow)


def serve(
    module: str, model_uri: str, params_file: str, host: str, port: int, workers: int = 1,
    shadow: str | None = None,
) -> None:  # fmt: skip
    """Serve `module`'s app with uvicorn until SIGINT or SIGTERM (open requests finish first).
    Workers need uvicorn with Kludex/uvicorn#3149 (TCP_NODELAY on the supervisor's socket)."""
    options = dict(  # no access log to name a proxied client in
        host=host, port=port, log_level="warning", timeout_graceful_shutdown=10, proxy_headers=False
    )
    where = f"{model_uri} on http://{host}:{port}"
    also = f", {shadow} in shadow" if shadow else ""
    if workers == 1:
        app = build(module, model_uri, params_file, shadow)  # a model that cannot load fails here
        log.info("serving %s%s", where, also)
        uvicorn.run(app, **options)
        return
    params = tools.load_params(params_file)
    served = loader.locate(model_uri, params)  # every worker serves this very version
    shadow_served = loader.locate(shadow, params) if shadow else None
    os.environ[APP_ENV] = json.dumps(
        {"module": module, "model": dataclasses.asdict(served), "params_file": str(params_file),
         "shadow": shadow_served and dataclasses.asdict(shadow_served)}
    )  # fmt: skip
    os.environ.setdefault(onnx_network.THREADS_ENV, str(max(1, usable_cores() // workers)))
    log.info("serving %s with %d worker processes%s", where, workers, also)
    with server_metrics.shared_between_processes():  # before the workers start
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **options)
