"""What the REST server and the demo page share: a body-size limit, error bodies, uvicorn.

With `workers` > 1 uvicorn's supervisor binds the port once and starts that many server
processes (spawned, each importing the app through `app_from_environment`); SIGTERM to the
supervisor stops them all. The supervisor first has the model pinned and copied to a local
folder (`models:/name@champion` → that version's files, pipeline/model/cache.py), so
every process serves the same version even if the alias moves meanwhile; each process's ONNX
Runtime gets its share of the cores.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
DRAIN_FACTOR = 4  # an oversized body up to this many times the limit is read before the 413


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


def error_response(status: int, code: str, message: str):
    """A 4xx as MLflow's scoring server shapes it: `{"error_code", "message"}` in JSON."""
    from starlette.responses import Response

    return Response(error_body(code, message), status, media_type="application/json")


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 and one line, before it is parsed.

    Clients such as urllib and requests send the whole body before they read an answer: if the
    server answers and closes while the body is still coming, they see a broken pipe instead of
    the 413. So an oversized body up to DRAIN_FACTOR times the limit is read and thrown away
    (nothing is kept) before the answer; a larger one, or a client that asked for
    `Expect: 100-continue` and so has sent nothing yet, gets the 413 at once.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= self.max_bytes * DRAIN_FACTOR and not expects_continue(headers):
                await discard(receive, self.max_bytes * DRAIN_FACTOR)
            return await self.refuse(send)
        chunks, size = [], 0
        while True:  # read the body once, counting, and hand the app a replay of it
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # e.g. the client disconnected
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                if message.get("more_body"):
                    await discard(receive, self.max_bytes * DRAIN_FACTOR - size)
                return await self.refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def refuse(self, send: Send) -> None:
        body = error_body(
            "REQUEST_TOO_LARGE",
            f"request body over {self.max_bytes} bytes; send fewer images per request",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def expects_continue(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"expect", b"").lower() == b"100-continue"


async def discard(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body, at most `budget` bytes of it."""
    while budget > 0:
        message = await receive()
        budget -= len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


APP_ENV = "PIPELINE_SERVE_APP"  # what each worker process builds: module, model, params file


def build(module: str, model_uri: str, params_file: str):
    """`module.build_app(model_uri, params)` with the body limit around it."""
    import pipeline.params.config as config

    params = config.load_params(params_file)
    app = importlib.import_module(module).build_app(model_uri, params)
    return BodyLimit(app, params.serve.max_body_bytes)


def app_from_environment():
    """The app of one worker process (uvicorn's factory), as the supervisor described it."""
    from pipeline.runtime.cli import setup_logging

    setup_logging()
    spec = json.loads(os.environ[APP_ENV])
    return build(spec["module"], spec["model_uri"], spec["params_file"])


def tcp_socket(host: str, port: int) -> socket.socket:
    """A listening socket for uvicorn's workers, made as TCP explicitly.

    uvicorn's own (`Config.bind_socket`) leaves the protocol at 0, accepted connections inherit
    it, and asyncio then never sets TCP_NODELAY on them: each keep-alive request after the
    first waits ~40 ms for the client's delayed ACK (Kludex/uvicorn#3149, open).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.set_inheritable(True)
    return listener


def serve(
    module: str, model_uri: str, params_file: str, host: str, port: int, workers: int = 1
) -> None:
    """Serve `module`'s app with uvicorn until SIGINT or SIGTERM (open requests finish first)."""
    import uvicorn

    import pipeline.params.config as config
    from pipeline.model import onnx_network
    from pipeline.runtime.processes import usable_cores
    from pipeline.serving import loader

    options = {"host": host, "port": port, "log_level": "warning", "timeout_graceful_shutdown": 10}
    if workers == 1:
        app = build(module, model_uri, params_file)  # a model that cannot load fails here
        log.info("serving %s on http://%s:%d", model_uri, host, port)
        uvicorn.run(app, **options)
        return
    from uvicorn.supervisors import Multiprocess

    params = config.load_params(params_file)
    local_model = loader.local(model_uri, params)  # every worker serves this very version
    os.environ[APP_ENV] = json.dumps(
        {"module": module, "model_uri": local_model, "params_file": str(params_file)}
    )
    os.environ.setdefault(onnx_network.THREADS_ENV, str(max(1, usable_cores() // workers)))
    log.info("serving %s on http://%s:%d with %d worker processes", model_uri, host, port, workers)
    server_config = uvicorn.Config(
        f"{__name__}:app_from_environment", factory=True, workers=workers, **options
    )
    Multiprocess(server_config, sockets=[tcp_socket(host, port)]).run()
