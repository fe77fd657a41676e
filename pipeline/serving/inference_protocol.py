"""The Open Inference Protocol (KServe V2, as Triton speaks it) beside MLflow's /invocations:
health, metadata and inference routes for one input, `images` (FP32 [-1, 28, 28] in [0, 1], or
UINT8 0–255), and one output, `probabilities`, as JSON `data` or with the binary tensor
extension. Sizes and shapes are checked before a tensor is read; errors are `{"error": ...}`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import pipeline.params.config as config
from pipeline.inference.onnx_network import IMAGE_SHAPE, InputError, validated

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT, OUTPUT = "images", "probabilities"
Endpoint = Callable[[Request], Awaitable[Response]]
DATATYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}


class ProtocolError(ValueError):
    """A request the protocol refuses: its status and one line."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def reply(payload: object, status: int = 200, headers: dict | None = None) -> Response:
    """JSON, numpy arrays too; an error is `{"error": "one line"}`."""
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status, headers, media_type="application/json")


@dataclass(frozen=True)
class Inference:
    images: np.ndarray  # float32 (n, 28, 28) in [0, 1]
    binary: bool
    request_id: str | None


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    if header_length is None:
        length = len(body)
    elif not header_length.isdigit() or int(header_length) > len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} {header_length!r}: not a length within the body's {len(body)} bytes"
        )
    else:
        length = int(header_length)
    try:
        header = orjson.loads(body[:length])
    except orjson.JSONDecodeError:
        raise ProtocolError("the inference header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("the inference header must be a JSON object")
    return header, body[length:]


def tensor_shape(tensor: dict) -> tuple[int, ...]:
    shape = tensor.get("shape")
    sides = isinstance(shape, list) and len(shape) == 3 and all(type(s) is int for s in shape)
    if not sides or tuple(shape[1:]) != IMAGE_SHAPE or shape[0] < 1:
        raise ProtocolError(f"input shape {shape!r}, expected [n, 28, 28] with n >= 1")
    return tuple(shape)


def read_images(header: dict, binary: bytes) -> np.ndarray:
    """The input tensor's images as float32 in [0, 1], its size checked before it is read."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f'expected "inputs": one tensor, "{INPUT}" FP32 [-1, 28, 28]')
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise ProtocolError(f"unknown input {tensor.get('name')!r}: this model takes {INPUT!r}")
    shape = tensor_shape(tensor)
    dtype = DATATYPES.get(tensor.get("datatype"))
    if dtype is None:
        raise ProtocolError(f"datatype {tensor.get('datatype')!r}: send FP32 or UINT8")
    count = shape[0] * shape[1] * shape[2]
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize or len(binary) != size:
            raise ProtocolError(
                f"binary_data_size {size!r} and {len(binary)} bytes after the header; "
                f"{shape} {tensor['datatype']} takes {count * dtype.itemsize}"
            )
        values = np.frombuffer(binary, dtype).reshape(shape)
    else:
        if binary:
            raise ProtocolError(f"{len(binary)} bytes after the header that no tensor claims")
        values = json_values(tensor.get("data"), count, dtype).reshape(shape)
    if dtype == np.uint8:
        return values.astype(np.float32) / np.float32(255)
    return values


def json_values(data: object, count: int, dtype: np.dtype) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError('the input has neither "data" nor binary_data_size')
    try:
        values = np.asarray(data, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ProtocolError("input data must be numbers (flat or nested like the shape)") from None
    if values.size != count:
        raise ProtocolError(f"{values.size} values in data; the shape takes {count}")
    if dtype == np.uint8 and (values.min() < 0 or values.max() > 255):
        raise ProtocolError("UINT8 data must be in 0-255")
    return values.astype(dtype)


def wants_binary(header: dict) -> bool:
    outputs = header.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise ProtocolError('"outputs" must be a list of objects')
        unknown = [o.get("name") for o in outputs if o.get("name") != OUTPUT]
        if unknown:
            raise ProtocolError(f"unknown output {unknown[0]!r}: this model gives {OUTPUT!r}")
        return any(bool((o.get("parameters") or {}).get("binary_data")) for o in outputs)
    return bool((header.get("parameters") or {}).get("binary_data_output"))


def parse_infer(body: bytes, header_length: str | None) -> Inference:
    header, binary = split_body(body, header_length)
    try:
        images = validated(read_images(header, binary))
    except InputError as problem:
        raise ProtocolError(str(problem)) from None
    request_id = header.get("id")
    return Inference(
        images, wants_binary(header), request_id if isinstance(request_id, str) else None
    )


def infer_response(
    inference: Inference, probabilities: np.ndarray, model: str, version: str
) -> Response:
    """Probabilities as JSON data, or as raw FP32 bytes after the JSON header."""
    output = {"name": OUTPUT, "datatype": "FP32", "shape": list(probabilities.shape)}
    answer = {"model_name": model, "model_version": version}
    if inference.request_id is not None:
        answer["id"] = inference.request_id
    if not inference.binary:
        answer["outputs"] = [output | {"data": probabilities.ravel()}]
        return reply(answer)
    data = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
    answer["outputs"] = [output | {"parameters": {"binary_data_size": len(data)}}]
    header = orjson.dumps(answer)
    return Response(header + data, headers={HEADER_LENGTH: str(len(header))},
                    media_type="application/octet-stream")  # fmt: skip


def routes(params: config.Params, version: Callable[[], str], infer: Endpoint) -> list[Route]:
    """The protocol's routes for the registered model: `version()` names the version served now."""
    name, n_classes = params.mlflow.registered_model, len(params.data.class_names)
    package = "mnist-lstm-pipeline"
    installed = importlib.metadata.version(package)
    server = {"name": package, "version": installed, "extensions": ["binary_tensor_data"]}

    async def health(request: Request) -> Response:
        return reply({"live": True} if request.url.path.endswith("live") else {"ready": True})

    async def metadata(request: Request) -> Response:
        return reply(server)

    def asked(request: Request) -> Response | None:
        """None when the request names the model served (and its version, if it names one)."""
        wanted = request.path_params.get("version")
        if wanted is not None and wanted != version():
            message = f"model {name} version {wanted} is not served; {version()} is"
            return reply({"error": message}, 404)
        return None

    async def model(request: Request) -> Response:
        return asked(request) or reply(
            {
                "name": name,
                "versions": [version()],
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, *IMAGE_SHAPE]}],
                "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, n_classes]}],
            }
        )

    async def model_ready(request: Request) -> Response:
        return asked(request) or reply({"name": name, "ready": True})

    async def inference(request: Request) -> Response:
        return asked(request) or await infer(request)

    async def unknown(request: Request) -> Response:
        message = f"no route {request.url.path}; this server serves model {name}"
        return reply({"error": message}, 404)

    base, versioned = f"/v2/models/{name}", f"/v2/models/{name}/versions/{{version}}"
    return [
        Route("/v2/health/live", health),
        Route("/v2/health/ready", health),
        Route("/v2", metadata),
        *(Route(prefix, model) for prefix in (base, versioned)),
        *(Route(f"{prefix}/ready", model_ready) for prefix in (base, versioned)),
        *(Route(f"{prefix}/infer", inference, methods=["POST"]) for prefix in (base, versioned)),
        Route("/v2/{rest:path}", unknown, methods=["GET", "POST"]),
    ]
