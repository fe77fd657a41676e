"""Figures drawn in a process of their own while the stage goes on with its work.

Importing matplotlib and drawing hold the GIL, for a second or two in each stage, while the
second core idles (train exports the ONNX model, evaluate scores and logs). A process spawned
when the stage starts imports matplotlib beside the stage's own imports and draws when asked:
the same figures code, the same PNG files.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

FIGURES = "pipeline.reports.figures"  # imported in the drawing process only


def draw(figure: str, path: Path, *args) -> Path:
    """`figures.<figure>(*args)` saved as a PNG at `path` (run in the drawing process)."""
    figures = importlib.import_module(FIGURES)
    figures.save(getattr(figures, figure)(*args), path)
    return path


class Painter:
    """Draws figures in its process; a PNG with no path of its own goes to a folder the painter
    deletes when it stops."""

    def __init__(self, pool: ProcessPoolExecutor, folder: Path) -> None:
        self.pool, self.folder = pool, folder

    def draw(self, figure: str, *args, path: str | Path | None = None) -> Future:
        """A Future of the PNG's path: `figures.<figure>(*args)` at `path`, or in the folder."""
        return self.pool.submit(draw, figure, Path(path or self.folder / f"{figure}.png"), *args)


@contextlib.contextmanager
def painter() -> Iterator[Painter]:
    """A drawing process, started now so that its imports overlap the stage's."""
    spawn = multiprocessing.get_context("spawn")  # never fork a process that runs TensorFlow
    with (
        tempfile.TemporaryDirectory(prefix="figures-") as folder,
        ProcessPoolExecutor(1, spawn, importlib.import_module, (FIGURES,)) as pool,
    ):
        pool.submit(int)  # the process starts with the first task
        yield Painter(pool, Path(folder))
