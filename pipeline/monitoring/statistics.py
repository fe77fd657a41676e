"""What an image looks like, in a few numbers: ink mass, centre of mass, stroke intensity.

They move when users' digits stop looking like MNIST's, and cost a few sums over the batch.
"""

from __future__ import annotations

import numpy as np

# The columns, in the order the prediction log and the reference hold them.
STATISTICS = ("ink", "centre_row", "centre_col", "mean_intensity")
INK_THRESHOLD = 0.1  # a pixel above this is part of a stroke (MNIST's background is 0)


def input_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """float (n, 28, 28) in [0, 1] → name → (n,); without ink: the image's centre, intensity 0."""
    images = np.asarray(images, dtype=np.float32)  # (n, rows, cols)
    _, rows, cols = images.shape
    ink = images.sum(axis=(1, 2), dtype=np.float64)  # (n,)
    has_ink = ink > 0
    safe_ink = np.where(has_ink, ink, 1.0)
    by_row = images.sum(axis=2, dtype=np.float64)  # (n, rows)
    by_col = images.sum(axis=1, dtype=np.float64)  # (n, cols)
    centre_row = np.where(has_ink, by_row @ np.arange(rows) / safe_ink, (rows - 1) / 2)
    centre_col = np.where(has_ink, by_col @ np.arange(cols) / safe_ink, (cols - 1) / 2)
    stroke = images > INK_THRESHOLD
    stroke_pixels = stroke.sum(axis=(1, 2))  # (n,)
    stroke_ink = np.where(stroke, images, 0).sum(axis=(1, 2), dtype=np.float64)
    mean_intensity = np.where(stroke_pixels > 0, stroke_ink / np.maximum(stroke_pixels, 1), 0.0)
    return dict(zip(STATISTICS, (ink, centre_row, centre_col, mean_intensity), strict=True))
