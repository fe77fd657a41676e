"""The prediction log: one SQLite row per scored image, written off the request path.

`write` only queues a batch; one thread inserts what GATHER_S seconds gathered in one transaction.
A failed write (a full disk) drops those rows with one warning; a kill loses only what was queued.
Past `max_bytes` the oldest rows are deleted and their pages given back (incremental vacuum).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.monitoring.statistics import STATISTICS, input_statistics

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

log = logging.getLogger(__name__)

TABLE = "predictions"
WAL_LIMIT_BYTES = 4_000_000
COLUMNS = ("time", "app", "model", "predicted", "confidence", *STATISTICS)
COLUMNS += ("shadow_model", "shadow_predicted", "shadow_confidence", "pixels")
SCHEMA = f"""
PRAGMA auto_vacuum = INCREMENTAL;  -- before the table: trims shrink the file
PRAGMA journal_mode = WAL;  -- readers never block the writers
PRAGMA synchronous = NORMAL;  -- whole transactions on a crash
PRAGMA journal_size_limit = {WAL_LIMIT_BYTES};  -- the log cut back after each checkpoint
CREATE TABLE IF NOT EXISTS {TABLE} (  -- the columns: docs/monitoring.md
    id INTEGER PRIMARY KEY, time REAL NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL,
    predicted INTEGER NOT NULL, confidence REAL NOT NULL,
    {", ".join(f"{name} REAL NOT NULL" for name in STATISTICS)},
    shadow_model TEXT, shadow_predicted INTEGER, shadow_confidence REAL, pixels BLOB
);
CREATE INDEX IF NOT EXISTS {TABLE}_by_time ON {TABLE} (time);
PRAGMA user_version = 1;  -- the schema's version
"""
DELETE_OLDEST = f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} ORDER BY id LIMIT ?)"
INSERT = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
LAZY_IMAGES = 16  # a batch of at most this many images keeps them for the writer (Scored.of)
QUEUE_SIZE = 1000  # scored batches waiting for the writer: a few numbers per image, or 16 images
GATHER_S = 0.05  # the writer gathers batches this long into one transaction (lost on kill -9)
BUSY_TIMEOUT_S = 10  # the writer of another server process holds the file's write lock
TRIM_TO = 0.9  # past max_bytes, the oldest rows are deleted down to this share of it
PAGES = ("page_size", "page_count", "freelist_count")
CLOSE = object()  # tells the writer to stop after what was queued before it


class LogError(Exception):
    """The prediction log cannot be read; the message names the file."""


@dataclass(frozen=True)
class Scored:
    """A batch of images as one request scored them, as the log keeps them."""

    time: float  # Unix seconds
    predicted: np.ndarray  # (n,) class indices
    confidence: np.ndarray  # (n,) their probabilities
    statistics: dict[str, np.ndarray] | None  # STATISTICS → (n,); None: the writer's to compute
    pixels: np.ndarray | None  # uint8 (n, 784), only when the log keeps pixels
    model: str = ""  # the version that scored them; "": the log's own (a server that never moves)
    shadow: tuple[str, list, list] | None = None  # its version, predicted, confidence (lists)
    images: np.ndarray | None = None  # float (n, 28, 28), kept while statistics is None

    @classmethod
    def of(
        cls, images: np.ndarray, probabilities: np.ndarray, keep_pixels: bool, model: str = ""
    ) -> Scored:
        """images float (n, 28, 28) in [0, 1] and the model's probabilities (n, classes)."""
        flat = np.asarray(images).reshape(len(images), -1)
        pixels = np.rint(flat * 255).astype(np.uint8) if keep_pixels else None
        # A small batch's statistics (a dozen numpy calls, whatever its size) are left to the
        # writer's thread, off the event loop that scored it; a large batch's are computed here,
        # so that the queue holds a few numbers per image, never the images.
        lazy = len(images) <= LAZY_IMAGES
        predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
        statistics = None if lazy else input_statistics(images)
        return cls(time.time(), predicted, confidence, statistics, pixels, model,
                   images=images if lazy else None)  # fmt: skip


def rows_of(scored: Scored, app: str, model: str) -> list[tuple]:
    count = len(scored.predicted)
    statistics = scored.statistics
    if statistics is None:  # a small batch's: computed here, on the writer's thread
        statistics = input_statistics(scored.images)
    nothing = [None] * count
    shadow, shadow_predicted, shadow_confidence = scored.shadow or (None, nothing, nothing)
    columns = [
        [scored.time] * count,
        [app] * count,
        [scored.model or model] * count,
        scored.predicted.tolist(),
        scored.confidence.tolist(),
        *(statistics[name].tolist() for name in STATISTICS),
        [shadow] * count,
        shadow_predicted,
        shadow_confidence,
        nothing if scored.pixels is None else [row.tobytes() for row in scored.pixels],
    ]
    return list(zip(*columns, strict=True))


class PredictionLog:
    """One server process's writer of the log at `path` (other processes may write it too)."""

    def __init__(
        self,
        path: str | Path,
        app: str,
        model: str,
        max_bytes: int,
        on_drop: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.path, self.app, self.model, self.max_bytes = Path(path), app, model, max_bytes
        self.on_drop = on_drop  # told how many images were not logged
        self.queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self.connection: sqlite3.Connection | None = None
        self.failing = False  # warned, and not written since
        self.thread = threading.Thread(target=self._drain, name="prediction-log", daemon=True)
        self.thread.start()

    def write(self, scored: Scored) -> None:
        """Queue a scored batch for the log, never waiting: a full queue drops it (counted)."""
        try:
            self.queue.put_nowait(scored)
        except queue.Full:
            self.on_drop(len(scored.predicted))

    def close(self, timeout: float = 10) -> None:
        """Write what is queued, then stop the writer (within about `timeout` seconds)."""
        with contextlib.suppress(queue.Full):
            self.queue.put(CLOSE, timeout=timeout)
        self.thread.join(timeout)

    def _drain(self) -> None:
        while True:
            batch = [self.queue.get()]
            if batch[0] is not CLOSE:  # what arrives meanwhile joins it in one transaction; asleep,
                time.sleep(GATHER_S)  # this thread is not woken (and handed the GIL) by each write
            with contextlib.suppress(queue.Empty):
                while batch[-1] is not CLOSE and len(batch) < QUEUE_SIZE:
                    batch.append(self.queue.get_nowait())
            entries = [entry for entry in batch if entry is not CLOSE]
            if entries:
                self._insert(entries)
            if len(entries) < len(batch):
                break
        if self.connection is not None:
            self.connection.close()

    def _insert(self, entries: list[Scored]) -> None:
        try:
            rows = [row for entry in entries for row in rows_of(entry, self.app, self.model)]
            self.connection = self.connection or self._open()
            with self.connection:  # one transaction: all these rows, or none
                self.connection.executemany(INSERT, rows)
            self._trim()
        except Exception as error:  # sqlite3.Error, OSError, or anything: the writer goes on
            self.on_drop(sum(len(scored.predicted) for scored in entries))
            if not self.failing:
                why = "predictions are served but not logged until it can be written again"
                log.warning("prediction log %s: cannot write (%s); %s", self.path, error, why)
            self.failing = True
            if self.connection is not None:
                self.connection.close()
            self.connection = None
            return
        if self.failing:
            log.info("prediction log %s: writing again", self.path)
            self.failing = False

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        try:
            connection.executescript(SCHEMA)
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def _trim(self) -> None:
        """Past max_bytes of rows, delete the oldest down to TRIM_TO of it."""
        connection = self.connection
        size, pages, free = (connection.execute(f"PRAGMA {name}").fetchone()[0] for name in PAGES)
        used = (pages - free) * size
        if used <= self.max_bytes:
            return
        rows = connection.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        excess = math.ceil(rows * (1 - TRIM_TO * self.max_bytes / used))
        with connection:
            connection.execute(DELETE_OLDEST, (excess,))
        # freed pages leave the file; executescript steps the pragma to its end, execute once
        connection.executescript("PRAGMA incremental_vacuum;")


def read_predictions(path: str | Path, since: float = 0.0) -> pd.DataFrame:
    """The rows logged at or after `since` (Unix seconds), oldest first; `time` as UTC dates."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise LogError(f"no prediction log at {path}: `make serve` and `make demo` write it")
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)) as connection:
            frame = pd.read_sql_query(
                f"SELECT * FROM {TABLE} WHERE time >= ? ORDER BY id", connection, params=(since,)
            )
    except (sqlite3.Error, pd.errors.DatabaseError) as error:
        raise LogError(f"{path}: not a prediction log ({error})") from None
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    return frame


def images_of(pixels: pd.Series) -> np.ndarray:
    """The `pixels` column back as float32 images (n, 28, 28) in [0, 1]."""
    flat = np.frombuffer(b"".join(pixels), dtype=np.uint8).reshape(len(pixels), 28, 28)
    return flat.astype(np.float32) / 255
