"""The draw-a-digit page (`make demo`): draw with a mouse or a finger, see the top classes.

GET / is the page; POST /api/classify takes {"image": "data:image/png;base64,..."} and answers
{"classes": [{"label", "probability"}, ...]}, best first, read as `make predict` reads a file.
"""

from __future__ import annotations

import base64
import binascii
import functools
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

import pipeline.params.tools as tools
from pipeline.runtime import cli
from pipeline.serving import asgi, batching, images, loader, serve
from pipeline.serving.asgi import BadRequest

PAGE = Path(__file__).parent / "static" / "demo.html"
TOP = 3


def picture(body: bytes, max_pixels: int) -> np.ndarray:
    """{"image": data URL or base64 of an image file} → the model's input, (1, 28, 28)."""
    payload = asgi.json_body(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
        raise BadRequest('expected a JSON object {"image": "data:image/png;base64,..."}')
    image = payload["image"]
    text = image.split(",", 1)[-1] if image.startswith("data:") else image
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image is not valid base64") from None
    try:
        return images.from_picture(data, max_pixels)[np.newaxis]
    except images.ImageError as error:
        raise BadRequest(f"image: {error}") from None


def build_app(
    model: str | loader.Served, params: tools.ToolParams, shadow: str | loader.Served | None = None
) -> Starlette:
    """The page and its endpoint around `model`, with `shadow` scored beside it."""
    monitoring, batcher = batching.monitored_batcher("demo", model, params, shadow)
    class_names, max_pixels = params.data.class_names, params.serve.max_image_pixels
    page = PAGE.read_text()
    on_thread = asgi.worker_threads()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def classify(request: Request) -> Response:
        try:
            with batcher.admitted():
                images = await on_thread(picture, await request.body(), max_pixels)
                probabilities, _ = await batcher.score(images)
        except BadRequest as problem:
            return problem.response()
        except batching.Overloaded as error:
            return monitoring.shed(error)
        order = np.argsort(probabilities[0])[::-1][:TOP]
        top = [{"label": class_names[i], "probability": float(probabilities[0][i])} for i in order]
        return JSONResponse({"classes": top})

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
