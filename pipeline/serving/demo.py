"""The draw-a-digit page (`make demo`): draw with a mouse or a finger, see the top classes.

    python -m pipeline.serving.demo [--model URI] [--shadow URI] [--host HOST] [--port PORT]

GET / is the page; POST /api/classify takes {"image": "data:image/png;base64,..."} and answers
{"classes": [{"label", "probability"}, ...]}, best first, preprocessed as `make predict` does.
Decoding and scoring run on worker threads, so the page and /health answer meanwhile; an image
over `serve.max_image_pixels` is refused from its header. GET /metrics, the prediction log and
`--shadow` as in `make serve`; started on an alias, it follows it as `make serve` does. Bound
to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

import pipeline.params.tools as tools
from pipeline.runtime import cli
from pipeline.serving import asgi, batching, following, images, loader, serve
from pipeline.serving.asgi import BadRequest

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "static" / "demo.html"
TOP = 3


def decode(payload: object, max_pixels: int) -> np.ndarray:
    """{"image": data URL or base64 of an image file} → the model's (28, 28) input."""
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
        raise BadRequest('expected a JSON object {"image": "data:image/png;base64,..."}')
    image = payload["image"]
    text = image.split(",", 1)[-1] if image.startswith("data:") else image
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image is not valid base64") from None
    try:
        return images.from_picture(data, max_pixels)
    except images.ImageError as error:
        raise BadRequest(f"image: {error}") from None


def ranked(probabilities: np.ndarray, class_names: list[str]) -> list[dict]:
    order = np.argsort(probabilities)[::-1][:TOP]
    return [{"label": class_names[i], "probability": float(probabilities[i])} for i in order]


def picture(body: bytes, max_pixels: int) -> np.ndarray:
    """A request body → the model's input, (1, 28, 28); BadRequest names what is wrong."""
    return decode(asgi.json_body(body), max_pixels)[np.newaxis]


def build_app(
    model: str | loader.Served, params: tools.ToolParams, shadow: str | loader.Served | None = None
) -> Starlette:
    """The page and its endpoint around `model`, with `shadow` scored beside it; the model is
    scored through the batcher, which follows the alias as `make serve` does."""
    served, monitoring, predict = asgi.monitored("demo", model, params, shadow)
    batcher = following.batcher_for(served, monitoring, predict, params)
    class_names, max_pixels = params.data.class_names, params.serve.max_image_pixels
    page = PAGE.read_text()
    threads = asgi.WorkerThreads()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def classify(request: Request) -> Response:
        try:
            with batcher.admitted():
                images = await threads.run(picture, await request.body(), max_pixels)
                probabilities, _ = await batcher.score(images)
        except BadRequest as problem:
            return problem.response()
        except batching.Overloaded as error:
            return monitoring.shed(error)
        return JSONResponse({"classes": ranked(probabilities[0], class_names)})

    return monitoring.app(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/api/classify", classify, methods=["POST"]),
        ]
    )


run = functools.partial(
    serve.run, module="pipeline.serving.demo", port_key="demo_port", command="make demo"
)


def main(argv: list[str] | None = None) -> None:
    cli.run_command(run, argv, __doc__, serve.ARGUMENTS, serve.EXPECTED, tools.load_params_or_exit)


if __name__ == "__main__":
    main()
