"""`make predict` and the demo's reading of a picture (pipeline/serving/images.py): decoding,
the paper separated from the ink, MNIST's steps; milliseconds per picture, no model."""

import io
import statistics
import time

import numpy as np
from PIL import Image

from benchmarks import markdown
from pipeline.serving import images

PICTURES = {"a scan, 400×400 PNG": ((400, 400), "PNG"),
            "a phone's photo, 4000×3000 JPEG": ((3000, 4000), "JPEG")}  # fmt: skip
REPEATS = 15


def photo(shape: tuple[int, int], kind: str) -> bytes:
    """A "1" in dark ink on grey paper, with a camera's noise and a lighting gradient."""
    height, width = shape
    rng = np.random.default_rng(0)
    gray = 185 + np.linspace(-30, 30, width)[np.newaxis, :] + rng.normal(0, 4, shape)
    gray[height // 4 : 3 * height // 4, width // 2 - width // 40 : width // 2 + width // 40] = 45
    file = io.BytesIO()
    Image.fromarray(gray.clip(0, 255).astype(np.uint8)).save(file, kind, quality=90)
    return file.getvalue()


def measure() -> dict:
    figures = {}
    for name, (shape, kind) in PICTURES.items():
        data = photo(shape, kind)
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            images.from_picture(data, 4_000_000)
            times.append(time.perf_counter() - started)
        figures[name] = {"kB": len(data) / 1000, "ms": 1000 * statistics.median(times)}
    return figures


def table(figures: dict) -> list[str]:
    rows = [[name, f"{f['kB']:,.0f}", f"{f['ms']:.1f}"] for name, f in figures.items()]
    return ["## Reading a picture", "",
            *markdown.table(["picture", "file, kB", "ms per picture (median)"], rows), "",
            "A JPEG is decoded at reduced scale (Pillow's draft mode); every picture is then "
            "worked at 512 pixels a side at most."]  # fmt: skip
