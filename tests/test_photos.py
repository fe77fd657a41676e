"""Photographed digits read about as well as the arrays; a picture of no digit is refused."""

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.inference.onnx_network import OnnxNetwork
from pipeline.serving import images

SIDE = 400  # the photo's side, in pixels, for the off-centre digit; the others are half that
MAX_PIXELS = 4_000_000  # serve.max_image_pixels's default
PAPER, PEN = 185.0, 45.0  # grey paper, dark ink (grey levels)
# condition → (noise σ in grey levels, what else the camera did); "scan" is white paper, no noise
CONDITIONS = {
    "scan": (0, ""),
    "paper": (0, ""),
    "noise 4": (4, ""),
    "noise 8": (8, ""),
    "gradient ±30": (4, "gradient"),
    "blur": (4, "blur"),
    "off-centre": (4, "small"),
    "JPEG 70": (4, "jpeg"),
    "light on dark": (4, "inverted"),
}


def photo(digit: np.ndarray, condition: str, rng: np.random.Generator) -> bytes:
    """A 28×28 digit in [0, 1] as a photo's file taken in `condition`."""
    sigma, effect = CONDITIONS[condition]
    side = SIDE if effect == "small" else SIDE // 2
    size, (top, left) = (150, (30, 220)) if effect == "small" else (150, (25, 25))
    digit_image = Image.fromarray((digit * 255).round().astype(np.uint8))
    ink = np.zeros((side, side), np.float32)  # in [0, 1]
    enlarged = digit_image.resize((size, size), Image.Resampling.BICUBIC)
    ink[top : top + size, left : left + size] = np.asarray(enlarged, np.float32) / 255
    paper, pen = {"inverted": (PEN, 215.0)}.get(effect, (PAPER, PEN))
    gray = 255 * (1 - ink) if condition == "scan" else paper + (pen - paper) * ink
    if effect == "blur":
        gray = ndimage.gaussian_filter(gray, 2)
    if effect == "gradient":
        gray = gray + np.linspace(-30, 30, side, dtype=np.float32)[np.newaxis, :]
    gray = gray + rng.normal(0, sigma, gray.shape)
    file = io.BytesIO()
    picture = Image.fromarray(np.clip(gray.round(), 0, 255).astype(np.uint8))
    picture.save(file, "JPEG" if effect == "jpeg" else "PNG", quality=70)
    return file.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("condition", CONDITIONS)
def test_photographed_digits_read_about_as_well_as_the_arrays(condition, real_model):
    """100 real test digits per condition, within 4 points of the arrays' accuracy."""
    digits, labels = real_model.images[:100], real_model.labels[:100]
    rng = np.random.default_rng(sorted(CONDITIONS).index(condition))
    inputs = np.stack([images.from_picture(photo(digit, condition, rng), MAX_PIXELS)
                       for digit in digits])  # fmt: skip
    predicted = OnnxNetwork(real_model.path).predict(inputs).argmax(axis=1)
    on_arrays = (real_model.predicted[:100] == labels).mean()
    accuracy = (predicted == labels).mean()
    assert accuracy >= on_arrays - 0.04, f"{condition}: {accuracy:.2f} (arrays {on_arrays:.2f})"
    if condition == "scan":  # a clean scan is read as the array is
        assert (predicted == real_model.predicted[:100]).mean() >= 0.97


@pytest.mark.slow
def test_a_phone_photo_is_decoded_at_reduced_scale_and_read(real_model):
    rng = np.random.default_rng(0)
    ink = Image.fromarray((real_model.images[0] * 255).astype(np.uint8))
    ink = np.asarray(ink.resize((1200, 1200), Image.Resampling.BICUBIC), np.float32) / 255
    gray = np.full((3000, 4000), 170.0, np.float32) + rng.normal(0, 6, (3000, 4000))
    gray[900:2100, 1400:2600] -= 130 * ink  # a 12-megapixel photo, three times the limit
    file = io.BytesIO()
    Image.fromarray(gray.clip(0, 255).astype(np.uint8)).convert("RGB").save(file, "JPEG")
    picture = images.read_image(file.getvalue(), MAX_PIXELS)
    assert max(picture.size) == images.WORK_SIDE and picture.mode == "L"
    model_input = images.from_picture(file.getvalue(), MAX_PIXELS)
    probabilities = OnnxNetwork(real_model.path).predict(model_input[np.newaxis])
    assert probabilities.argmax() == real_model.predicted[0]


@pytest.mark.parametrize("kind", ["white", "noisy paper", "JPEG of noisy paper", "a speck"])
def test_a_picture_of_no_digit_is_refused_in_one_line(kind):
    rng = np.random.default_rng(1)
    paper = PAPER + np.linspace(-30, 30, SIDE)[np.newaxis, :] + rng.normal(0, 8, (SIDE, SIDE))
    gray = np.full((SIDE, SIDE), 255.0) if kind == "white" else paper
    if kind == "a speck":
        gray[200:204, 100:104] = PEN  # a pen's touch, no digit
    file = io.BytesIO()
    picture = Image.fromarray(gray.clip(0, 255).astype(np.uint8))
    picture.save(file, "JPEG" if kind.startswith("JPEG") else "PNG")
    with pytest.raises(images.ImageError) as raised:
        images.from_picture(file.getvalue(), MAX_PIXELS)
    message = str(raised.value)
    assert "\n" not in message
    assert ("empty" if kind == "white" else "no digit found") in message, message
    if kind == "a speck":
        assert "speck" in message


def test_a_digit_on_a_dark_board_and_on_white_paper_give_one_input():
    """Polarity comes from the background's side: chalk on a board reads as ink on paper."""
    rng = np.random.default_rng(2)
    digit = np.zeros((28, 28))
    digit[6:22, 12:16] = 1.0  # a "1"
    on_paper = images.from_picture(photo(digit, "noise 4", rng), MAX_PIXELS)
    on_board = images.from_picture(photo(digit, "light on dark", rng), MAX_PIXELS)
    assert on_paper.max() > 0.9 and on_paper[0].max() == 0  # strong ink on an empty field
    assert np.abs(on_paper - on_board).mean() < 0.05  # the paper taken for ink: about 0.3
