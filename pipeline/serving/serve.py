"""Serve a registered model over REST (`make serve`): MLflow's scoring protocol and the Open
Inference Protocol (KServe V2, inference_protocol.py), scored in batches (batching.py) by ONNX
Runtime without MLflow in the process; docs/serving.md says what each route takes and answers.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import pipeline.params.config as config
import pipeline.params.tools as tools
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
from pipeline.inference.onnx_network import InputError, validated
from pipeline.runtime import cli, ports
from pipeline.serving import asgi, batching, loader
from pipeline.serving import inference_protocol as protocol
from pipeline.serving.asgi import BadRequest

TENSOR_KEYS = ("inputs", "instances")  # MLflow's two JSON forms of a tensor input
TABLE_KEYS = ("dataframe_split", "dataframe_records")  # its DataFrame forms: not for images
INLINE_BYTES = 65_536  # a body up to this size (4 images as JSON) is parsed on the event loop
MLFLOW_VERSION = importlib.metadata.version("mlflow")  # what /version reports, as MLflow's does


def request_images(body: bytes, content_type: str) -> np.ndarray:
    """A request body → its images, float32 (n, 28, 28), as MLflow's scoring server reads them."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise BadRequest(
            f"content type {content_type or '(none)'!r}: send application/json", status=415
        )
    payload = asgi.json_body(body)
    keys = [key for key in TENSOR_KEYS if isinstance(payload, dict) and key in payload]
    if len(keys) != 1:
        table = isinstance(payload, dict) and any(key in payload for key in TABLE_KEYS)
        raise BadRequest(
            ("this model takes a tensor of images, not a DataFrame: " if table else "")
            + 'expected a JSON object with one of "inputs" or "instances": images (n, 28, 28)'
        )
    try:
        return validated(payload[keys[0]])
    except InputError as error:
        raise BadRequest(str(error), code="INVALID_PARAMETER_VALUE") from None


@functools.lru_cache(maxsize=64)  # asked on every V2 answer; a server serves few versions
def version_number(served: loader.Served) -> str:
    """The registry version a server serves (`models:/name/3` → "3"); "1" for a file."""
    match = registry.REGISTERED_URI.match(served.pinned)
    return match["version"] if match and match["version"] else "1"


def build_app(
    model: str | loader.Served, params: tools.ToolParams, shadow: str | loader.Served | None = None
) -> Starlette:
    """The REST app around `model`, with `shadow` scored beside it: both protocols, one batcher."""
    monitoring, batcher = batching.monitored_batcher("serve", model, params, shadow)
    on_thread = asgi.worker_threads()
    name = params.mlflow.registered_model

    async def parsed(parse: Callable[[bytes, Any], Any], body: bytes, detail: Any) -> Any:
        """A small body parsed on the event loop (cheaper than a thread hop), a large one not."""
        if len(body) <= INLINE_BYTES:
            return parse(body, detail)
        return await on_thread(parse, body, detail)

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")

    async def version(request: Request) -> Response:
        serving = {"mlflow": MLFLOW_VERSION} | dataclasses.asdict(batcher.model.served)
        if monitoring.shadow:
            serving["shadow"] = monitoring.shadow.pinned
        return JSONResponse(serving)

    async def invocations(request: Request) -> Response:
        try:
            with batcher.admitted():
                content_type = request.headers.get("content-type", "")
                images = await parsed(request_images, await request.body(), content_type)
                probabilities, _ = await batcher.score(images)
        except BadRequest as problem:
            return problem.response()
        except batching.Overloaded as error:
            return monitoring.shed(error)
        answer = orjson.dumps({"predictions": probabilities}, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(answer, media_type="application/json")

    async def infer(request: Request) -> Response:
        try:
            with batcher.admitted():
                length = request.headers.get(protocol.HEADER_LENGTH)
                inference = await parsed(protocol.parse_infer, await request.body(), length)
                probabilities, answered = await batcher.score(inference.images)
        except protocol.ProtocolError as problem:
            return protocol.reply({"error": str(problem)}, problem.status)
        except batching.Overloaded as error:
            monitoring.metrics.shed.inc()
            return protocol.reply({"error": str(error)}, 503, {"Retry-After": "1"})
        return protocol.infer_response(inference, probabilities, name,
                                       version_number(answered.served))  # fmt: skip

    return monitoring.app(
        routes=[
            Route("/ping", ping),
            Route("/health", ping),
            Route("/version", version),
            Route("/invocations", invocations, methods=["POST"]),
            *protocol.routes(params, lambda: version_number(batcher.model.served), infer),
        ],
        hot={"/invocations": invocations, f"/v2/models/{name}/infer": infer},
    )


ARGUMENTS = {  # make serve's and make demo's
    "--model": {"help": "an MLflow model URI, a model folder or an .onnx file (the champion)"},
    "--shadow": {"help": "a second model scored on every request, never answering"},
    "--host": {"help": "address to bind (default: serve.host, 127.0.0.1)"},
    "--port": {"type": int, "help": "port (default: serve.port; make demo: serve.demo_port)"},
    "--workers": {"type": int, "help": "server processes on the port (default: serve.workers)"},
}
EXPECTED = (ports.PortUnavailable, loader.ModelError, tracking.TrackingError, config.ConfigError)


def run(
    params: tools.ToolParams,
    params_file: str,
    model: str | None = None,
    shadow: str | None = None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    *,
    module: str = "pipeline.serving.serve",
    port_key: str = "port",
    command: str = "make serve",
) -> None:
    """Serve `module.build_app` until stopped; host, port (`port_key`) and workers default to
    params.yaml `serve:`. A busy port is refused before any model loads, naming `command`."""
    workers = params.serve.workers if workers is None else workers
    if workers < 1:
        raise config.ConfigError(f"--workers {workers}: needs at least 1")
    host, port = host or params.serve.host, port or getattr(params.serve, port_key)
    ports.check_free(host, port, command)
    model = model or registry.champion_uri(params.mlflow.registered_model)
    asgi.serve(module, model, params_file, host, port, workers, shadow)


def main(argv: list[str] | None = None) -> None:
    cli.run_command(run, argv, __doc__, ARGUMENTS, EXPECTED, tools.load_params_or_exit)


if __name__ == "__main__":
    main()
