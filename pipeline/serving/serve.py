"""Serve a registered model over REST, as MLflow's scoring server does (`make serve`).

    python -m pipeline.serving.serve [--model URI] [--shadow URI] [--host HOST] [--port PORT]
                                     [--workers N]

The protocol of `mlflow models serve` for this model: POST /invocations with a JSON body
`{"inputs": images}` (or `"instances"`), images (n, 28, 28) with pixels in [0, 1], answered
`{"predictions": probabilities}`; GET /ping and /health. GET /version says what is serving, as
JSON: `{"mlflow": version, "model": as asked, "pinned": the version it named at start, "path":
the local copy}` (MLflow's answers its version alone, as plain text). Errors are a 4xx with
MLflow's `{"error_code", "message"}`, the message one line. It runs the registered model's
ONNX file on ONNX Runtime without MLflow in the process (pipeline/serving/loader.py), parsing
and scoring on worker threads, at most one per core, never on the event loop. One pid that
stops cleanly on SIGTERM (with `--workers N`, uvicorn's supervisor of N processes on the one
port). Bound to 127.0.0.1 unless told otherwise; bodies over `serve.max_body_bytes` get 413.

GET /metrics is for Prometheus; each scored image goes to the prediction log, and `--shadow`
scores a second model beside the served one, off the request path (pipeline/monitoring/).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import pipeline.params.config as config
import pipeline.params.tools as tools
import pipeline.tracking.store as tracking
from pipeline.runtime import cli, ports
from pipeline.serving import asgi, loader
from pipeline.serving.asgi import BadRequest

log = logging.getLogger(__name__)

TENSOR_KEYS = ("inputs", "instances")  # MLflow's two JSON forms of a tensor input
TABLE_KEYS = ("dataframe_split", "dataframe_records")  # its DataFrame forms: not for images


def images_of(body: bytes, content_type: str) -> object:
    """The images in a request body, as MLflow's scoring server reads them; BadRequest if none."""
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
    return payload[keys[0]]


def answer(body: bytes, content_type: str, predict: loader.Predict) -> Response:
    """A request body → the model's `{"predictions": ...}`; BadRequest says what is wrong."""
    try:
        probabilities = predict(images_of(body, content_type))
    except loader.InputError as error:
        raise BadRequest(str(error), code="INVALID_PARAMETER_VALUE") from None
    body = json.dumps({"predictions": probabilities.tolist()}).encode()
    return Response(body, media_type="application/json")


def build_app(
    model: str | loader.Served, params: tools.ToolParams, shadow: str | loader.Served | None = None
) -> Starlette:
    """The REST app around `model` (an MLflow model URI, a model folder or an `.onnx` file),
    with `shadow` (the same kinds) scored beside it."""
    served, monitoring, predict = asgi.monitored("serve", model, params, shadow)
    threads = asgi.WorkerThreads()
    serving = {"mlflow": importlib.metadata.version("mlflow")} | dataclasses.asdict(served)
    if monitoring.shadow:
        serving["shadow"] = monitoring.shadow.pinned

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")

    async def version(request: Request) -> Response:
        return JSONResponse(serving)

    async def invocations(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        return await threads.respond(answer, body, content_type, predict)

    return monitoring.app(
        routes=[
            Route("/ping", ping),
            Route("/health", ping),
            Route("/version", version),
            Route("/invocations", invocations, methods=["POST"]),
        ]
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
    """Serve `module.build_app(model_uri, params, shadow)` until stopped; host, port and workers
    default to params.yaml `serve:` (the port under `port_key`). A busy port is refused first,
    before any model loads, in one line naming `command` with a free port."""
    workers = params.serve.workers if workers is None else workers
    if workers < 1:
        raise config.ConfigError(f"--workers {workers}: needs at least 1")
    host, port = host or params.serve.host, port or getattr(params.serve, port_key)
    ports.check_free(host, port, command)
    model = model or loader.default_uri(params)
    asgi.serve(module, model, params_file, host, port, workers, shadow)


def main(argv: list[str] | None = None) -> None:
    cli.run_command(run, argv, __doc__, ARGUMENTS, EXPECTED, tools.load_params_or_exit)


if __name__ == "__main__":
    main()
