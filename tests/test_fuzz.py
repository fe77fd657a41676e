"""Every route of make serve and make demo fuzzed: no 5xx, no hang, memory bounded."""

import base64
import http.client
import json

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from .support import linear_onnx, running, write_params

CASES = 1500  # per server: a few thousand in all, well within a minute
NAME = "mnist-lstm"  # params.yaml's mlflow.registered_model, which the V2 routes name
MEMORY_MB = 150  # what a server may grow by over the whole run


@pytest.fixture(scope="module", params=["serve", "demo"])
def server(request, tmp_path_factory):
    from .support import make_mnist, tiny_params

    folder = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    raw = tiny_params(folder, folder / "mirror", make_mnist())
    raw["serve"] |= {"max_body_bytes": 200_000, "max_pending": 8}
    params = write_params(raw, folder / "params.yaml")
    rng = np.random.default_rng(0)
    model = linear_onnx(folder / "tiny.onnx", rng.normal(size=(784, 10)), np.zeros(10))
    args = ["--params", str(params), "--model", str(model)]
    with running(f"pipeline.serving.{request.param}", args, "/health",
                 folder / "server.log") as process:  # fmt: skip
        yield request.param, process


ROUTES = ["/", "/ping", "/health", "/version", "/metrics", "/invocations", "/api/classify",
          "/v2", "/v2/health/live", "/v2/health/ready", f"/v2/models/{NAME}",
          f"/v2/models/{NAME}/ready", f"/v2/models/{NAME}/infer",
          f"/v2/models/{NAME}/versions/1/infer", "/v2/models/other/infer", "/nowhere"]  # fmt: skip
CONTENT_TYPES = ["application/json", "application/octet-stream", "text/plain", "",
                 "application/json; charset=utf-8", "multipart/form-data; boundary=x"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
# Values are made by numpy from a drawn seed: hypothesis drawing thousands of pixels one by one
# would cost far more than the requests.
FAULTS = ["none", "nan", "inf", "negative", "255", "string"]


def values(rng: np.random.Generator, count: int, fault: str) -> list:
    pixels = rng.random(count).tolist()
    if count and fault != "none":
        spoilt = {"nan": float("nan"), "inf": float("inf"), "negative": -1.0, "255": 255.0,
                  "string": "a"}  # fmt: skip
        pixels[int(rng.integers(count))] = spoilt[fault]
    return pixels


@st.composite
def bodies(draw) -> tuple[bytes, dict]:
    """A body and the headers that go with it, from random bytes to nearly valid tensors."""
    kind = draw(st.sampled_from(["bytes", "json", "images", "tensor", "picture"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size, fault = draw(st.sampled_from([0, 1, 27, 784, 2000])), draw(st.sampled_from(FAULTS))
    headers = {}
    if kind == "bytes":
        body = rng.bytes(size)
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "images":
        side = draw(st.sampled_from([28, 27, 0]))
        key = draw(st.sampled_from(["inputs", "instances", "dataframe_split"]))
        pixels = np.reshape(values(rng, side * side, fault), (side, side)).tolist()
        body = json.dumps({key: [pixels] * draw(st.integers(0, 3))}).encode()
    elif kind == "tensor":
        tensor = {"name": draw(st.sampled_from(["images", "x"])),
                  "shape": draw(st.sampled_from([[1, 28, 28], [2, 28, 28], [1, 784], [0, 28, 28],
                                                 [-1, 28, 28], [10**9, 28, 28], []])),
                  "datatype": draw(st.sampled_from(["FP32", "UINT8", "FP64", 7]))}  # fmt: skip
        if draw(st.booleans()):
            tensor["parameters"] = {"binary_data_size": draw(st.sampled_from([size, 3136, -1]))}
        else:
            tensor["data"] = values(rng, size, fault)
        inputs = draw(st.sampled_from([[tensor], [], [tensor, tensor]]))
        header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
        body = header.encode() + rng.bytes(draw(st.sampled_from([0, size, 3136, 12544])))
        headers["Inference-Header-Content-Length"] = draw(
            st.sampled_from([str(len(header)), "0", "-1", "x", str(len(body) + 5)]))  # fmt: skip
    else:
        data = b"\x89PNG\r\n\x1a\n" + rng.bytes(size)
        body = json.dumps({"image": "data:image/png;base64," + base64.b64encode(data).decode()})
        body = body.encode()
    return body, headers


def send(port: int, method: str, path: str, body: bytes, headers: dict) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body if method == "POST" else None, headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_fuzzed_requests_on_every_route_get_no_5xx_and_the_server_goes_on(server):
    kind, process = server
    port = int(process.url.rsplit(":", 1)[1])
    memory = psutil.Process(process.pid)
    before = memory.memory_info().rss

    @seed(37)
    @settings(max_examples=CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.sampled_from(["GET", "POST", "PUT"]), st.sampled_from(ROUTES), bodies(),
           st.sampled_from(CONTENT_TYPES))  # fmt: skip
    def fuzz(method: str, path: str, body_and_headers: tuple, content_type: str) -> None:
        body, headers = body_and_headers
        status = send(port, method, path, body, headers | {"Content-Type": content_type})
        assert status < 500, (method, path, status, body[:200], headers)

    fuzz()
    good = json.dumps({"inputs": np.zeros((1, 28, 28)).tolist()}).encode()
    answered = send(port, "GET", "/health", b"", {}) if kind == "demo" else send(
        port, "POST", "/invocations", good, {"Content-Type": "application/json"})  # fmt: skip
    assert answered == 200
    grown = (memory.memory_info().rss - before) / 2**20
    assert grown < MEMORY_MB, f"{kind} grew by {grown:.0f} MB"
