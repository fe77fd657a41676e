"""Behavioural checks: does a prediction survive what should not change it? (NumPy only.)

Invariance: an image moved by a few pixels shows the same digit. Robustness: a little Gaussian
noise should cost little accuracy. Both score moved copies of test images in one batch each.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]  # images (n, 28, 28) → probabilities (n, classes)


def shifts(count: int, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 2) row and column offsets in [-max_shift, max_shift], never both 0."""
    offsets = rng.integers(-max_shift, max_shift, size=(count, 2), endpoint=True)
    still = ~offsets.any(axis=1)
    offsets[still, rng.integers(0, 2, size=still.sum())] = max_shift  # moved after all
    return offsets


def shifted(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each image (n, 28, 28) moved by its (rows, columns) offset, the uncovered side blank."""
    side = images.shape[1]
    pad = int(np.abs(offsets).max(initial=0))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    rows = pad - offsets[:, 0, None] + np.arange(side)  # (n, 28): source row of each row
    columns = pad - offsets[:, 1, None] + np.arange(side)
    picked = np.arange(len(images))[:, None, None]
    return padded[picked, rows[:, :, None], columns[:, None, :]]


def noisy(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The images with Gaussian noise of `sigma` added, clipped to [0, 1] as pixels are."""
    noise = rng.normal(0.0, sigma, size=images.shape).astype(images.dtype)
    return np.clip(images + noise, 0.0, 1.0)


def behaviour_metrics(
    predict: Predict,
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    settings: tuple[int, float],
    seed: int,
) -> dict[str, float]:
    """`shift_agreement` (share of moved images predicted as before) and `noise_accuracy_drop`
    (clean accuracy less noisy); `settings` is (max shift in pixels, noise σ)."""
    max_shift, sigma = settings
    rng = np.random.default_rng(seed)
    moved = shifted(images, shifts(len(images), max_shift, rng))
    agreement = float((predict(moved).argmax(axis=1) == predictions).mean())
    noisy_accuracy = (predict(noisy(images, sigma, rng)).argmax(axis=1) == labels).mean()
    clean_accuracy = (predictions == labels).mean()
    return {
        "shift_agreement": agreement,
        "noise_accuracy_drop": float(clean_accuracy - noisy_accuracy),
    }
