"""The draw-a-digit page (`make demo`): draw with a mouse or a finger, see the top classes.

    python -m pipeline.serving.demo [--model URI] [--host HOST] [--port PORT]

GET / is the page; POST /api/classify takes {"image": "data:image/png;base64,..."} and answers
{"classes": [{"label", "probability"}, ...]}, best first, after the same preprocessing as
`python -m pipeline.predict`. Bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request  # module level: FastAPI resolves annotations from here
from fastapi.responses import HTMLResponse, JSONResponse, Response

import pipeline.shared.config as config
from pipeline.serving import http, images, models, serve

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "static" / "demo.html"
TOP = 3


class BadRequest(ValueError):
    """The request cannot be classified; the message says why."""


def decode(payload: object) -> np.ndarray:
    """{"image": data URL or base64 of an image file} → the model's (28, 28) input."""
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
        raise BadRequest('expected a JSON object {"image": "data:image/png;base64,..."}')
    text = (
        payload["image"].split(",", 1)[-1]
        if payload["image"].startswith("data:")
        else (payload["image"])
    )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image is not valid base64") from None
    try:
        return images.to_model_input(images.read_image(data))
    except images.ImageError as error:
        raise BadRequest(f"image: {error}") from None


def ranked(probabilities: np.ndarray, class_names: list[str]) -> list[dict]:
    order = np.argsort(probabilities)[::-1][:TOP]
    return [{"label": class_names[i], "probability": float(probabilities[i])} for i in order]


def build_app(predict: models.Predict, class_names: list[str]) -> FastAPI:
    app = FastAPI(title="draw a digit")
    page = PAGE.read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/api/classify")
    async def classify(request: Request) -> Response:
        try:
            payload = await request.json()
        except ValueError:
            return error(400, "BAD_REQUEST", "the body is not valid JSON")
        try:
            model_input = decode(payload)
        except BadRequest as problem:
            return error(400, "BAD_REQUEST", str(problem))
        probabilities = predict(model_input[np.newaxis])[0]
        return JSONResponse({"classes": ranked(probabilities, class_names)})

    def error(status: int, code: str, message: str) -> Response:
        return Response(http.error_body(code, message), status, media_type="application/json")

    return app


def run(model_uri: str, params: config.Params, host: str, port: int) -> None:
    predict = models.load(model_uri, params)
    http.serve(build_app(predict, params.data.class_names), host, port,
               params.serve.max_body_bytes)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    serve.serve_main(run, __doc__.splitlines()[0], "demo_port", argv)


if __name__ == "__main__":
    main()
