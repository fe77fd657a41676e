"""Figures people look at: training curves, confusion matrix, misclassified images (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from pipeline.data.files import atomic_path


def training_curves(history: pd.DataFrame) -> Figure:
    """Loss and accuracy, train and validation, against the iteration."""
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
    """Up to `limit` misclassified test images, each titled `true → predicted`."""
    wrong = np.flatnonzero(labels != predictions)[:limit]
    columns = 6
    rows = max(1, -(-len(wrong) // columns))
    height = rows * 1.7 + 0.8
    figure = Figure(figsize=(columns * 1.5, height))
    # Fixed margins: images with their axes off need no layout engine, and constrained layout
    # measures every title and tick of the 36 axes (most of the evaluate stage's drawing time).
    grid = figure.subplots(rows, columns, squeeze=False)
    figure.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - 0.8 / height, wspace=0.1, hspace=0.35
    )
    for axes in grid.flat:
        axes.axis("off")
    for axes, index in zip(grid.flat, wrong, strict=False):
        axes.imshow(images[index], cmap="gray_r", vmin=0, vmax=1)
        title = f"{class_names[labels[index]]} → {class_names[predictions[index]]}"
        axes.set_title(title, fontsize=9)
    figure.suptitle(
        f"misclassified {data_name} test images (true → predicted): "
        f"{len(wrong)} shown, {int((labels != predictions).sum())} in all"
    )
    return figure


def save(figure: Figure, path: str | Path) -> None:
    """Write a PNG atomically."""
    with atomic_path(path, ".png") as temporary:
        figure.savefig(temporary, format="png", dpi=100)
