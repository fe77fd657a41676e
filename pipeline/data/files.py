"""Array files, hashes and atomic writes shared by the stages (no TensorFlow here)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

Arrays = dict[str, np.ndarray]


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """sha256 of an array's raw C-order bytes (dtype and shape are not included)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent
    )
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        mask = os.umask(0)  # the only way to read the umask is to set it
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)  # mkstemp makes 0600 files
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically, keys in a stable order."""
    with atomic_path(path, ".json") as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    """Write a table as CSV atomically, floats to six significant digits."""
    with atomic_path(path, ".csv") as temporary:
        table.to_csv(temporary, index=False, float_format="%.6g")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_arrays(path: str | Path, arrays: Arrays) -> None:
    """Save named arrays to an uncompressed .npz, atomically."""
    with atomic_path(path, ".npz") as temporary:
        np.savez(temporary, **arrays)


def load_arrays(path: str | Path) -> Arrays:
    """Load every array of an .npz into memory (no pickled objects allowed)."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
