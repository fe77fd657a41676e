"""What the REST server and the demo page share: a body-size limit, one-line errors, uvicorn."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
MAX_MESSAGE = 300  # characters of an error message a client gets back


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 and one line, before it is parsed."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.refuse(send)
        chunks, size = [], 0
        while True:  # read the body once, counting, and hand the app a replay of it
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # e.g. the client disconnected
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self.refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def refuse(self, send: Send) -> None:
        body = error_body("REQUEST_TOO_LARGE", f"request body over {self.max_bytes} bytes; "
                          "send fewer images per request")  # fmt: skip
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def one_line(message: str) -> str:
    """MLflow's scoring server puts the whole request in its messages: keep the cause only."""
    cause = message.rsplit("Error: ", 1)[-1].strip().splitlines()
    text = cause[0] if cause else message
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


class OneLineErrors:
    """ASGI middleware: a 4xx JSON error keeps its code and one short line of message."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started: dict = {}
        chunks: list[bytes] = []

        async def shorten(message: dict) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
                if not 400 <= message["status"] < 500:
                    await send(message)
                return
            if not started or not 400 <= started["status"] < 500:
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = rewrite(b"".join(chunks))
            headers = [(k, v) for k, v in started["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send(started | {"headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, shorten)


def rewrite(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
        code, message = payload["error_code"], str(payload["message"])
    except (ValueError, KeyError, TypeError):
        return body  # not an MLflow error: leave it
    return error_body(code, one_line(message))


def serve(app, host: str, port: int, max_body_bytes: int) -> None:
    """Run `app` with uvicorn until SIGINT or SIGTERM (uvicorn finishes open requests first)."""
    import uvicorn

    log.info("serving on http://%s:%d (bodies up to %d bytes)", host, port, max_body_bytes)
    uvicorn.run(BodyLimit(OneLineErrors(app), max_body_bytes), host=host, port=port,
                log_level="warning", timeout_graceful_shutdown=10)  # fmt: skip
