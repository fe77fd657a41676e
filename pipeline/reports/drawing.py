"""Figures drawn in a process of their own while the stage goes on with its work.

Importing matplotlib and drawing hold the GIL, for a second or two in each stage, while the
second core idles (train exports the ONNX model, evaluate scores and logs). A process started
with the stage (`python -m pipeline.reports.drawing`) imports matplotlib beside the stage's own
imports and draws what it is sent: the same figures code, the same PNG files.

Protocol: the stage writes pickled (figure function name, PNG path, arguments) to the
process's stdin; the process answers each, in order, on its stdout with the pickled path or
the exception the drawing raised. EOF on stdin stops it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO


def answer(requests: BinaryIO, replies: BinaryIO) -> None:
    """The drawing process's loop: each request drawn and answered, until EOF."""
    from pipeline.reports import figures  # in the drawing process only

    while True:
        try:
            figure, path, args = pickle.load(requests)
        except EOFError:
            return
        try:
            figures.save(getattr(figures, figure)(*args), path)
            reply = path
        except Exception as error:  # noqa: BLE001  handed back to the stage, raised there
            reply = error
        pickle.dump(reply, replies)
        replies.flush()


class Painter:
    """The stage's side: `draw` sends a figure to the process; a PNG with no path of its own
    goes to a folder deleted when the painter stops."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.sender = ThreadPoolExecutor(max_workers=1)  # one request at a time, in order

    def draw(self, figure: str, *args, path: str | Path | None = None) -> Future:
        """A Future of the PNG's path: `figures.<figure>(*args)` at `path`, or in the folder."""
        path = Path(path or self.folder / f"{figure}.png")
        return self.sender.submit(self._ask, (figure, path, args))

    def _ask(self, request: tuple) -> Path:
        pickle.dump(request, self.process.stdin)
        self.process.stdin.flush()
        try:
            reply = pickle.load(self.process.stdout)
        except EOFError:
            raise RuntimeError("the drawing process died") from None
        if isinstance(reply, Exception):
            raise reply
        return reply

    def stop(self) -> None:
        self.sender.shutdown()
        self.process.stdin.close()
        self.process.wait()


@contextlib.contextmanager
def painter() -> Iterator[Painter]:
    """A drawing process, started now so that its imports overlap the stage's."""
    with tempfile.TemporaryDirectory(prefix="figures-") as folder:
        painting = Painter(Path(folder))
        try:
            yield painting
        finally:
            painting.stop()


if __name__ == "__main__":
    # The figures are wanted last: on a busy machine the stage's own work (MLflow's import, the
    # ONNX export) gets the cores first, and matplotlib's import the time they leave.
    os.nice(10)
    replies, sys.stdout = sys.stdout.buffer, sys.stderr  # stdout carries the replies alone
    answer(sys.stdin.buffer, replies)
    from pipeline.runtime.cli import exit_now

    exit_now()  # the stage waits for this exit: without matplotlib's teardown, at once
