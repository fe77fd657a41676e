"""A picture of one digit → the model's input, the way MNIST's images were made: decoded small,
upright and grey; the ink separated from the paper and its lighting; then MNIST's own steps
(docs/serving.md, "What a picture should be", walks through each).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from pipeline.params.config import IMAGE_SIDE

INK_BOX = 20  # MNIST's digits were fitted into 20×20, then centred in 28×28
WORK_SIDE = 512  # a larger picture is reduced to this (longer side) first: a digit needs fewer
MIN_DIGIT = 8  # ink whose bounding box is smaller than this many working pixels is no digit
MIN_CONTRAST = 0.06  # ink fainter than this share of black-to-white (15 grey levels) is paper
NOISE_LEVELS = 6.0  # ink stands this many noise deviations above the paper
INK_FULL = 90  # the ink's strength is 1 at this percentile of the ink and above, as in MNIST
EXTREME = 25  # pixels: about a speck's worth, far fewer than any digit's
SPECK = 0.1  # ink pieces smaller than this share of the largest one are specks, not strokes
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
KNOWN_FORMATS = "PNG, JPEG, BMP, GIF, TIFF, WebP"  # what a person might try first, of Pillow's


# read_image refuses an image over its own, lower pixel limit from the header: Pillow's is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    """This input cannot become a model input; the message says why."""


def read_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode any format Pillow reads → grayscale, upright, transparency white, at most WORK_SIDE.
    Over `max_pixels` it is refused before it is decoded (a 37 kB PNG can hold 169 MB); a JPEG
    is decoded at 1/2 to 1/8 scale (Pillow's draft mode) when that still covers WORK_SIDE."""
    unreadable = (OSError, ValueError, Image.DecompressionBombError)
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        if image.format == "JPEG":
            image.draft("L", (WORK_SIDE, WORK_SIDE))
    except UnidentifiedImageError:  # its message names only the in-memory buffer it was given
        raise ImageError(f"not an image Pillow can read ({KNOWN_FORMATS}, ...)") from None
    except unreadable as error:
        raise ImageError(f"not a readable image ({error})") from None
    width, height = image.size  # after draft: what will be decoded
    if width * height > max_pixels:
        raise ImageError(
            f"image of {width}×{height} pixels, over the limit of "
            f"{max_pixels:,} pixels (serve.max_image_pixels)"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except unreadable as error:
        raise ImageError(f"not a readable image ({error})") from None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image)
    gray = ImageOps.grayscale(image.convert("RGB"))
    gray.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)  # averages the noise away too
    return gray


def ink_up(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels in [0, 1] with the ink brighter than the paper, and what they stray from the
    paper's surface fitted to the border. The ink is the side that strays furthest, counted at
    the EXTREME-th pixel so that neither one dust grain nor the noise decides."""
    if float(gray.max() - gray.min()) < 1e-6:
        raise ImageError("the image is empty: one flat colour, no ink")
    border = np.ones(gray.shape, dtype=bool)  # a twentieth of a side: paper, if a digit is framed
    rows, columns = (max(1, side // 20) for side in gray.shape)
    border[rows:-rows, columns:-columns] = False
    residual = gray - paper_surface(gray, border)
    smooth = ndimage.gaussian_filter(residual, 1.0).ravel()
    darkest = -np.partition(smooth, EXTREME)[EXTREME]
    brightest = np.partition(smooth, -EXTREME)[-EXTREME]
    return (1.0 - gray, -residual) if darkest > brightest else (gray, residual)


def paper_surface(values: np.ndarray, paper: np.ndarray) -> np.ndarray:
    """A quadratic surface fitted to the paper's pixels: its level and the lighting's gradient."""
    step = max(1, min(values.shape) // 128)  # a grid of the pixels is plenty for six numbers
    rows = np.linspace(-0.5, 0.5, values.shape[0], dtype=np.float32)[:, np.newaxis]
    columns = np.linspace(-0.5, 0.5, values.shape[1], dtype=np.float32)[np.newaxis, :]
    grid_rows, grid_columns = np.broadcast_arrays(rows[::step], columns[:, ::step])
    fit = paper[::step, ::step]
    terms = [np.ones_like(grid_rows), grid_rows, grid_columns, grid_rows**2, grid_columns**2,
             grid_rows * grid_columns]  # fmt: skip
    (c0, c1, c2, c3, c4, c5), *_ = np.linalg.lstsq(
        np.stack([term[fit] for term in terms], axis=1), values[::step, ::step][fit]
    )
    return c0 + c1 * rows + c2 * columns + c3 * rows**2 + c4 * columns**2 + c5 * rows * columns


def separate_ink(gray: np.ndarray) -> np.ndarray:
    """Grayscale in [0, 1] → ink strength in [0, 1] on a background of exactly 0."""
    values, residual = ink_up(gray)  # past the border's surface; then past the paper's alone
    ink, level = ink_above(residual)
    residual = values - paper_surface(values, ~ndimage.binary_dilation(ink, iterations=2))
    ink, level = ink_above(residual)
    if not ink.any():
        raise ImageError("no digit found: the picture is blank (no ink stands out of the paper)")
    ink = without_specks(ink)
    full = float(np.percentile(residual[ink], INK_FULL))
    near = ndimage.binary_dilation(ink, iterations=2)  # the strokes' soft edges belong to them
    return np.where(near, np.clip((residual - level / 2) / (full - level / 2), 0.0, 1.0), 0.0)


def ink_above(residual: np.ndarray) -> tuple[np.ndarray, float]:
    """The pixels that stand out of the paper's noise (smoothed), and the level they pass."""
    smooth = ndimage.gaussian_filter(residual, 1.0)
    sample = smooth[::2, ::2]  # the paper's noise: a robust deviation (MAD) the ink barely moves
    noise = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    level = max(MIN_CONTRAST, NOISE_LEVELS * noise)
    return smooth > level, level


def without_specks(ink: np.ndarray) -> np.ndarray:
    """The ink's pieces that are not specks; refused if even the digit is too small."""
    labels, count = ndimage.label(ink, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.isin(labels, 1 + np.flatnonzero(sizes >= SPECK * sizes.max()))
    rows, columns = np.nonzero(kept)
    height, width = rows.max() - rows.min() + 1, columns.max() - columns.min() + 1
    if max(height, width) < MIN_DIGIT:
        raise ImageError(
            f"no digit found: the only ink is a speck of {width}×{height} pixels "
            f"(at {max(ink.shape)} pixels a side; a digit needs {MIN_DIGIT})"
        )
    return kept


def fit_ink(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink's bounding box and scale it to fit INK_BOX×INK_BOX, aspect kept."""
    rows, columns = np.nonzero(ink)
    cropped = ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    height, width = cropped.shape
    scale = INK_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(cropped.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def centre_by_mass(ink: np.ndarray) -> np.ndarray:
    """Place the ink in IMAGE_SIDE×IMAGE_SIDE with its centre of mass at the centre."""
    centre_row, centre_column = ndimage.center_of_mass(ink)
    # clipped: every ink pixel stays in the frame
    top = int(np.clip(round(IMAGE_SIDE / 2 - centre_row), 0, IMAGE_SIDE - ink.shape[0]))
    left = int(np.clip(round(IMAGE_SIDE / 2 - centre_column), 0, IMAGE_SIDE - ink.shape[1]))
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    canvas[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return canvas


def to_model_input(image: Image.Image) -> np.ndarray:
    """A grayscale picture of one digit → float32 (28, 28) in [0, 1], MNIST-style."""
    gray = np.asarray(image, dtype=np.float32) / 255.0
    return centre_by_mass(fit_ink(separate_ink(gray)))


def from_picture(data: bytes, max_pixels: int) -> np.ndarray:
    """An image file's bytes → the model's input: the one path every picture takes."""
    return to_model_input(read_image(data, max_pixels))


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
    return from_picture(data, max_pixels)
