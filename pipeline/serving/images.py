"""A picture of one character → the model's input, the way MNIST's images were made.

Grayscale; dark ink on a light background is inverted to light on dark; cropped to the ink's
bounding box; scaled to fit 20×20 keeping the aspect ratio; placed in 28×28 so that its centre
of mass is the centre; pixels in [0, 1] (LeCun et al., the MNIST database's own description).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.params.config import IMAGE_SIDE

INK_BOX = 20  # MNIST's digits were fitted into 20×20, then centred in 28×28
INK_LEVEL = 0.1  # a pixel above this share of the full ink range counts as ink (crop box)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
KNOWN_FORMATS = "PNG, JPEG, BMP, GIF, TIFF, WebP"  # what a person might try first, of Pillow's


# read_image refuses an image over its own pixel limit right after reading the header, so
# Pillow's warning for images over its larger limit (~89 megapixels) would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    """This input cannot become a model input; the message says why."""


def read_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode PNG, JPEG or any format Pillow reads; transparent pixels count as background.

    The size is read from the file's header first, and an image of more than `max_pixels`
    pixels is refused before it is decoded: a small file can hold a huge image (a 37 kB PNG of
    13000×13000 white pixels decodes to 169 MB per channel).
    """
    unreadable = (OSError, ValueError, Image.DecompressionBombError)
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:  # its message names only the in-memory buffer it was given
        raise ImageError(f"not an image Pillow can read ({KNOWN_FORMATS}, ...)") from None
    except unreadable as error:
        raise ImageError(f"not a readable image ({error})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image of {width}×{height} pixels, over the limit of "
            f"{max_pixels:,} pixels (serve.max_image_pixels)"
        )
    try:
        image.load()
    except unreadable as error:
        raise ImageError(f"not a readable image ({error})") from None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image)
    return ImageOps.grayscale(image.convert("RGB"))


def ink_on_dark(gray: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] as light ink on a dark background; a light background is inverted."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = 1.0 - gray if np.median(border) > 0.5 else gray
    low, high = float(ink.min()), float(ink.max())
    if high - low < 1e-6:
        raise ImageError("the image is empty: one flat colour, no ink")
    return (ink - low) / (high - low)  # full contrast: background 0, strongest ink 1


def fit_ink(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink's bounding box and scale it to fit INK_BOX×INK_BOX, aspect kept."""
    rows, columns = np.nonzero(ink > INK_LEVEL)
    cropped = ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    height, width = cropped.shape
    scale = INK_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(cropped.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def centre_by_mass(ink: np.ndarray) -> np.ndarray:
    """Place the ink in IMAGE_SIDE×IMAGE_SIDE with its centre of mass at the centre."""
    rows, columns = np.indices(ink.shape)
    total = ink.sum()
    centre_row, centre_column = (rows * ink).sum() / total, (columns * ink).sum() / total
    top = int(round(IMAGE_SIDE / 2 - centre_row))
    left = int(round(IMAGE_SIDE / 2 - centre_column))
    top = min(max(top, 0), IMAGE_SIDE - ink.shape[0])  # keep every ink pixel in the frame
    left = min(max(left, 0), IMAGE_SIDE - ink.shape[1])
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    canvas[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return canvas


def to_model_input(image: Image.Image) -> np.ndarray:
    """A grayscale picture of one character → float32 (28, 28) in [0, 1], MNIST-style."""
    gray = np.asarray(image, dtype=np.float32) / 255.0
    return centre_by_mass(fit_ink(ink_on_dark(gray)))


def from_array(array: np.ndarray) -> np.ndarray:
    """A saved model input: (28, 28), uint8 0–255 or floats in [0, 1]."""
    if array.shape != (IMAGE_SIDE, IMAGE_SIDE):
        raise ImageError(f"array of shape {array.shape}, expected ({IMAGE_SIDE}, {IMAGE_SIDE})")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ImageError(f"array of {array.dtype}, expected numbers")
    values = array.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ImageError("array values must be finite and in [0, 1] (or uint8 0–255)")
    return values


def load_input(path: Path, max_pixels: int) -> np.ndarray:
    """One file (an image of at most `max_pixels` pixels, or a `.npy` array) → the model's input."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ImageError(f"not a readable .npy array ({error})") from None
        return from_array(array)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read ({error.strerror})") from None
    return to_model_input(read_image(data, max_pixels))
