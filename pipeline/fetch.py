"""Fetch MNIST from the first source in `data.sources` that verifies; write it to data/raw/."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline import config, sources
from pipeline.data import Arrays, save_arrays, sha256_array, sha256_file, write_json

log = logging.getLogger(__name__)

RAW_FILE = "mnist.npz"
MANIFEST_FILE = "manifest.json"


class FetchError(Exception):
    """No source gave verified MNIST."""


@dataclass(frozen=True)
class FetchResult:
    source: str
    manifest: dict


def check_arrays(arrays: Arrays, expected: config.ArrayHashes) -> dict[str, str]:
    """Check each array against the expected hashes; return the hashes."""
    hashes = {}
    for name in sources.SPLITS:
        array = arrays[name].astype("uint8", copy=False)
        hashes[name] = sha256_array(array)
        sources.verify_sha256(f"array {name}", hashes[name], getattr(expected, name))
    return hashes


def first_verified(data: config.DataParams) -> tuple[str, Arrays, dict[str, str]]:
    """Try each source in order; return the first whose files and arrays verify."""
    failures = []
    for source in data.sources:
        name = sources.describe(source)
        log.info("trying %s", name)
        with tempfile.TemporaryDirectory(prefix="mnist-fetch-") as workdir:
            try:
                arrays = sources.read(source, data.download_timeout, Path(workdir))
                hashes = check_arrays(arrays, data.sha256)
            except sources.SourceError as error:
                log.warning("source failed: %s: %s", name, error)
                failures.append(f"{name}: {error}")
                continue
        log.info("verified %s", name)
        return name, arrays, hashes
    raise FetchError("no MNIST source verified: " + " | ".join(failures))


def manifest_path(raw_dir: str | Path) -> Path:
    return Path(raw_dir) / MANIFEST_FILE


def run(params: config.Params) -> FetchResult:
    """Write verified MNIST and a manifest (source, array and file hashes) to paths.raw_dir."""
    name, arrays, hashes = first_verified(params.data)
    raw_file = Path(params.paths.raw_dir) / RAW_FILE
    save_arrays(raw_file, {key: arrays[key].astype("uint8", copy=False) for key in sources.SPLITS})
    manifest = {
        "source": name,
        "arrays_sha256": hashes,
        "files_sha256": {RAW_FILE: sha256_file(raw_file)},
        "counts": {key: int(arrays[key].shape[0]) for key in ("x_train", "x_test")},
    }
    write_json(manifest_path(params.paths.raw_dir), manifest)
    log.info(
        "wrote %s (%d train, %d test images) from %s", raw_file, *manifest["counts"].values(), name
    )
    return FetchResult(name, manifest)


def main(argv: list[str] | None = None) -> None:
    config.run_stage(run, argv, __doc__, expected=(FetchError,))


if __name__ == "__main__":
    main()
