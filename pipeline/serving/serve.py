"""Serve a registered model over REST with MLflow's scoring server (`make serve`).

    python -m pipeline.serving.serve [--model URI] [--host HOST] [--port PORT] [--workers N]

The same FastAPI app as `mlflow models serve` (POST /invocations, GET /ping, /health, /version),
run in this process: no shell, no venv on PATH needed, one pid that stops cleanly on SIGTERM
(with `--workers N`, that pid is uvicorn's supervisor of N server processes on the one port).
Bound to 127.0.0.1 unless told otherwise; request bodies over `serve.max_body_bytes` get 413.
"""

from __future__ import annotations

import logging

import pipeline.shared.config as config
import pipeline.shared.tracking as tracking
from pipeline.serving import asgi, loader
from pipeline.shared.stage import setup_logging

log = logging.getLogger(__name__)


def build_app(model_uri: str, params: config.Params):
    """MLflow's scoring server app around the pyfunc model at `model_uri`."""
    from mlflow.pyfunc import scoring_server

    return scoring_server.init(loader.load_pyfunc(model_uri, params))


def serve_main(module: str, description: str, port_key: str, argv: list[str] | None) -> None:
    """The command line of a server: `--model`, `--host`, `--port`, `--workers` (defaults from
    params.yaml `serve:`) and `--params`; one line and a non-zero exit when the model cannot
    be had. `module.build_app(model_uri, params)` makes the app."""
    parser = config.params_parser(description)
    parser.add_argument(
        "--model", help="an MLflow model URI (default: models:/<mlflow.registered_model>@champion)"
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
