"""make serve's Open Inference Protocol, driven by Triton's own client; batching and shedding."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .support import (
    invocations,
    post_json,
    prometheus_samples,
    running,
    sample_total,
    write_params,
)

pytestmark = pytest.mark.slow
WAIT_MS, PENDING = 200, 4  # a batch gathers for 0.2 s; four requests admitted at once


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("protocol")
    raw = trained.params.model_dump(mode="json")
    raw["serve"] |= {"batch_wait_ms": WAIT_MS, "max_pending": PENDING}
    params = write_params(raw, folder / "params.yaml")
    with running("pipeline.serving.serve", ["--params", str(params)], "/v2/health/ready",
                 folder / "server.log", {"DVC_ROOT": str(trained.root)}) as process:  # fmt: skip
        yield process


@pytest.fixture
def client(server):
    connection = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield connection
    connection.close()


def infer(client, name: str, images: np.ndarray, datatype: str, binary: bool) -> np.ndarray:
    tensor = triton.InferInput("images", list(images.shape), datatype)
    tensor.set_data_from_numpy(images, binary_data=binary)
    wanted = triton.InferRequestedOutput("probabilities", binary_data=binary)
    return client.infer(name, [tensor], outputs=[wanted]).as_numpy("probabilities")


def test_tritons_client_infers_as_invocations_does_and_gets_404_for_another_model(
    server, client, trained
):
    name = trained.params.mlflow.registered_model
    champion = str(trained.client().get_model_version_by_alias(name, "champion").version)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    assert client.is_model_ready(name, champion) and not client.is_model_ready(name, "999")
    metadata = client.get_model_metadata(name)
    assert metadata["versions"] == [champion]
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    images = pixels.astype(np.float32) / 255
    status, answer = invocations(server.url, images)
    assert status == 200
    expected = np.asarray(answer["predictions"], np.float32)
    for datatype, tensor in (("FP32", images), ("UINT8", pixels)):
        for binary in (True, False):
            probabilities = infer(client, name, tensor, datatype, binary)
            np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    without_outputs = triton.InferInput("images", [3, 28, 28], "UINT8")
    without_outputs.set_data_from_numpy(pixels)  # no outputs named: binary answer by default
    result = client.infer(name, [without_outputs], model_version=champion, request_id="a1")
    assert result.get_response()["id"] == "a1"
    assert result.get_response()["model_version"] == champion
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    for other, version in (("another-model", ""), (name, "999")):  # in the protocol's shape
        with pytest.raises(InferenceServerException) as raised:
            client.infer(other, [without_outputs], model_version=version)
        assert raised.value.status() == "404" and "\n" not in raised.value.message()


def header(shape, datatype="FP32", size=None, data=None) -> bytes:
    tensor = {"name": "images", "shape": shape, "datatype": datatype}
    tensor |= {"parameters": {"binary_data_size": size}} if size is not None else {"data": data}
    return json.dumps({"inputs": [tensor]}).encode()


BAD = {  # body, header length: each a 400 with one line, before any tensor is read
    "binary size lies": (header([2, 28, 28], size=6272) + bytes(3136), -3136),
    "header length past the body": (header([1, 28, 28], size=3136) + bytes(3136), 99_999),
    "header length not a number": (header([1, 28, 28], size=3136), "x"),
    "huge shape, few bytes": (header([10**9, 28, 28], size=3136) + bytes(3136), -3136),
    "wrong datatype": (header([1, 28, 28], "INT64", size=6272) + bytes(6272), -6272),
    "flat shape": (header([1, 784], data=[0.0] * 784), None),
    "too little data": (header([1, 28, 28], data=[0.0] * 10), None),
    "pixels out of range": (header([1, 28, 28], data=[2.0] * 784), None),
    "strings": (header([1, 28, 28], data=["a"] * 784), None),
    "not JSON": (b"{inputs", None),
    "no inputs": (b"{}", None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_infer_requests_get_a_400_with_one_line(server, trained, case):
    body, length = BAD[case]
    if isinstance(length, int) and length < 0:
        length = len(body) + length  # the header's own length
    url = f"{server.url}/v2/models/{trained.params.mlflow.registered_model}/infer"
    sized = {} if length is None else {"Inference-Header-Content-Length": str(length)}
    status, answer = post_json(url, body, "application/octet-stream", sized)
    assert status == 400, (status, answer)
    assert answer["error"] and "\n" not in answer["error"] and len(answer["error"]) < 300
    assert invocations(server.url, np.zeros((1, 28, 28), np.float32))[0] == 200


def test_requests_that_arrive_together_are_each_answered_with_their_own_rows(server):
    images = np.random.default_rng(1).random((PENDING, 2, 28, 28), dtype=np.float32)
    alone = [invocations(server.url, batch)[1]["predictions"] for batch in images]
    with ThreadPoolExecutor(PENDING) as pool:  # within one batch's wait
        together = list(pool.map(lambda batch: invocations(server.url, batch), images))
    assert [status for status, _ in together] == [200] * PENDING
    np.testing.assert_allclose([answer["predictions"] for _, answer in together], alone, atol=1e-6)


def test_past_the_admitted_requests_the_server_answers_503_at_once_and_counts_them(server):
    before = sample_total(prometheus_samples(server.url), "requests_shed_total")
    image = np.zeros((1, 28, 28), np.float32)
    body = json.dumps({"inputs": image.tolist()}).encode()

    def post(_: int) -> tuple[int, str | None]:
        request = urllib.request.Request(server.url + "/invocations", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, None
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Retry-After")

    with ThreadPoolExecutor(4 * PENDING) as pool:
        answers = list(pool.map(post, range(4 * PENDING)))
    statuses = [status for status, _ in answers]
    assert set(statuses) == {200, 503} and statuses.count(200) >= PENDING, statuses
    assert {retry for status, retry in answers if status == 503} == {"1"}
    shed = sample_total(prometheus_samples(server.url), "requests_shed_total") - before
    assert shed == statuses.count(503)
