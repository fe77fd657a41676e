"""Serve a registered model over REST, as MLflow's scoring server does (`make serve`).

    python -m pipeline.serving.serve [--model URI] [--host HOST] [--port PORT] [--workers N]

The protocol of `mlflow models serve` for this model: POST /invocations with a JSON body
`{"inputs": images}` (or `"instances"`), images (n, 28, 28) with pixels in [0, 1], answered
`{"predictions": probabilities}`; GET /ping and /health; GET /version. Errors are a 4xx with
MLflow's `{"error_code", "message"}`, the message one line. It runs the registered model's
ONNX file on ONNX Runtime without MLflow in the process (pipeline/serving/loader.py), parsing
and scoring on worker threads, at most one per core, never on the event loop. One pid that
stops cleanly on SIGTERM (with `--workers N`, uvicorn's supervisor of N processes on the one
port). Bound to 127.0.0.1 unless told otherwise; bodies over `serve.max_body_bytes` get 413.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import pipeline.params.config as config
import pipeline.tracking.store as tracking
from pipeline.runtime.cli import setup_logging
from pipeline.runtime.processes import usable_cores
from pipeline.serving import asgi, loader

log = logging.getLogger(__name__)

TENSOR_KEYS = ("inputs", "instances")  # MLflow's two JSON forms of a tensor input
TABLE_KEYS = ("dataframe_split", "dataframe_records")  # its DataFrame forms: not for images


class BadRequest(ValueError):
    """A request this server refuses: its status, MLflow's error code and one line."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def images_of(body: bytes, content_type: str) -> object:
    """The images in a request body, as MLflow's scoring server reads them; BadRequest if none."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise BadRequest(
            415, "BAD_REQUEST", f"content type {content_type or '(none)'!r}: send application/json"
        )
    try:
        payload = json.loads(body)
    except ValueError:
        raise BadRequest(400, "BAD_REQUEST", "the body is not valid JSON") from None
    keys = [key for key in TENSOR_KEYS if isinstance(payload, dict) and key in payload]
    if len(keys) != 1:
        table = isinstance(payload, dict) and any(key in payload for key in TABLE_KEYS)
        raise BadRequest(
            400,
            "BAD_REQUEST",
            ("this model takes a tensor of images, not a DataFrame: " if table else "")
            + 'expected a JSON object with one of "inputs" or "instances": images (n, 28, 28)',
        )
    return payload[keys[0]]


def answer(body: bytes, content_type: str, predict: loader.Predict) -> bytes:
    try:
        probabilities = predict(images_of(body, content_type))
    except loader.InputError as error:
        raise BadRequest(400, "INVALID_PARAMETER_VALUE", str(error)) from None
    return json.dumps({"predictions": probabilities.tolist()}).encode()


def build_app(model_uri: str, params: config.Params) -> Starlette:
    """The REST app around the model at `model_uri` (an MLflow model URI or an `.onnx` file)."""
    predict = loader.load(model_uri, params)
    limiter = anyio.CapacityLimiter(usable_cores())
    version = importlib.metadata.version("mlflow")

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")

    async def mlflow_version(request: Request) -> Response:
        return Response(version, media_type="application/json")

    async def invocations(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        try:
            result = await anyio.to_thread.run_sync(
                answer, body, content_type, predict, limiter=limiter
            )
        except BadRequest as problem:
            return asgi.error_response(problem.status, problem.code, str(problem))
        return Response(result, media_type="application/json")

    return Starlette(
        routes=[
            Route("/ping", ping),
            Route("/health", ping),
            Route("/version", mlflow_version),
            Route("/invocations", invocations, methods=["POST"]),
        ]
    )


def serve_main(module: str, description: str, port_key: str, argv: list[str] | None) -> None:
    """The command line of a server: `--model`, `--host`, `--port`, `--workers` (defaults from
    params.yaml `serve:`) and `--params`; one line and a non-zero exit when the model cannot
    be had. `module.build_app(model_uri, params)` makes the app."""
    parser = config.params_parser(description)
    parser.add_argument(
        "--model",
        help="an MLflow model URI, a local model folder or an .onnx file "
        "(default: models:/<mlflow.registered_model>@champion)",
    )
    parser.add_argument("--host", help="address to bind (default: serve.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help=f"port (default: serve.{port_key})")
    parser.add_argument(
        "--workers", type=int, help="server processes on the port (default: serve.workers)"
    )
    args = parser.parse_args(argv)
    params = config.load_params_or_exit(args.params)
    setup_logging()
    workers = params.serve.workers if args.workers is None else args.workers
    if workers < 1:
        raise SystemExit(f"error: --workers {workers}: needs at least 1")
    try:
        asgi.serve(
            module,
            args.model or loader.default_uri(params),
            args.params,
            args.host or params.serve.host,
            args.port or getattr(params.serve, port_key),
            workers,
        )
    except (loader.ModelError, tracking.TrackingError, config.ConfigError) as error:
        raise SystemExit(f"error: {error}") from None


def main(argv: list[str] | None = None) -> None:
    serve_main("pipeline.serving.serve", __doc__.splitlines()[0], "port", argv)


if __name__ == "__main__":
    main()
