"""The body-size limit both servers share, on a real uvicorn server and real sockets."""

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from pipeline.serving.asgi import DRAIN_FACTOR, BodyLimit

from .support import wait_until

LIMIT = 200_000


async def body_size(scope, receive, send) -> None:
    """An app that answers with the size of the body it was handed."""
    size, more = 0, True
    while more:
        message = await receive()
        size, more = size + len(message.get("body", b"")), message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"size": size}).encode()})


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(BodyLimit(body_size, LIMIT), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout=10, interval=0.01)
        yield listener.getsockname()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


def post(address, body: bytes, headers: dict[str, str], pause_after: int | None = None):
    """POST `body` as urllib does (all of it, then read the answer), maybe pausing part-way."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.putrequest("POST", "/")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body[:pause_after])
        if pause_after is not None:
            time.sleep(0.3)  # a server that answered at once has closed by now
            connection.send(body[pause_after:])
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def sized(body: bytes) -> dict[str, str]:
    return {"Content-Length": str(len(body)), "Connection": "close"}


def test_a_body_within_the_limit_reaches_the_app_whole(address):
    body = b"x" * LIMIT
    assert post(address, body, sized(body), pause_after=1024) == (200, {"size": LIMIT})


def test_an_oversized_body_sent_on_or_chunked_gets_the_413(address):
    body = b"x" * (LIMIT * 3)  # more than the sockets buffer, less than DRAIN_FACTOR times
    status, answer = post(address, body, sized(body), pause_after=1024)
    assert status == 413 and str(LIMIT) in answer["message"]
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        chunks = (b"x" * 10_000 for _ in range(LIMIT // 10_000 + 5))
        connection.request("POST", "/", chunks, {"Connection": "close"}, encode_chunked=True)
        assert connection.getresponse().status == 413
    finally:
        connection.close()


def test_a_client_that_expects_100_continue_is_refused_before_it_sends(address):
    headers = {"Content-Length": str(LIMIT * DRAIN_FACTOR * 10), "Expect": "100-continue"}
    status, answer = post(address, b"", headers)
    assert status == 413 and str(LIMIT) in answer["message"]
