"""Figures people look at: training curves, confusion matrix, misclassified images (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from pipeline.data.files import atomic_path


def training_curves(history: Mapping[str, Sequence[float]]) -> Figure:
    """Loss and accuracy, train and validation, against the iteration: the history table's
    columns (a dict of lists, so that the drawing process never imports pandas)."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss, accuracy = figure.subplots(1, 2)
    for axes, metric in ((loss, "loss"), (accuracy, "accuracy")):
        for split in ("train", "val"):
            axes.plot(history["iteration"], history[f"{split}_{metric}"], marker="o", label=split)
        axes.set(xlabel="iteration", ylabel=metric, title=metric)
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def confusion_heatmap(confusion: np.ndarray, class_names: list[str]) -> Figure:
    """Counts with true classes as rows and predictions as columns; the diagonal is correct."""
    figure = Figure(figsize=(6, 5.5), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(confusion, cmap="Blues")
    threshold = confusion.max() / 2
    for (row, column), count in np.ndenumerate(confusion):
        color = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", fontsize=7, color=color)
    ticks = range(len(confusion))
    axes.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names)
    axes.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


def misclassified_grid(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: list[str],
    data_name: str,
    limit: int = 36,
) -> Figure:
    """Up to `limit` misclassified test images, each titled `true → predicted`.

    One image of all the digits on white, with the titles as text: an axes per digit (36, their
    frames off) looks the same and costs most of the evaluate stage's drawing time."""
    wrong = np.flatnonzero(labels != predictions)[:limit]
    columns, side = 6, images.shape[1]
    rows = max(1, -(-len(wrong) // columns))
    height = rows * 1.7 + 0.8
    figure = Figure(figsize=(columns * 1.5, height))
    # a cell is 1.5 × 1.7 inches, as wide as the digit and its gap, the title above the digit
    cell_width = side + side // 4
    cell_height = round(cell_width * 1.7 / 1.5)
    mosaic = np.zeros((rows * cell_height, columns * cell_width), np.float32)
    axes = figure.add_axes((0.01, 0.01, 0.98, 1 - 0.8 / height - 0.01))
    axes.axis("off")
    for place, index in enumerate(wrong):
        top = (place // columns) * cell_height + cell_height - side
        left = (place % columns) * cell_width + (cell_width - side) // 2
        mosaic[top : top + side, left : left + side] = images[index]
        title = f"{class_names[labels[index]]} → {class_names[predictions[index]]}"
        axes.text(left + side / 2, top - 1, title, ha="center", va="bottom", fontsize=9)
    axes.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    figure.suptitle(
        f"misclassified {data_name} test images (true → predicted): "
        f"{len(wrong)} shown, {int((labels != predictions).sum())} in all"
    )
    return figure


def save(figure: Figure, path: str | Path) -> None:
    """Write a PNG atomically."""
    with atomic_path(path, ".png") as temporary:
        figure.savefig(temporary, format="png", dpi=100)
