"""Fetch the data set from the first source in `data.sources` that verifies; write it raw."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pipeline.data.sources as sources
import pipeline.params.config as config
import pipeline.runtime.cli as stage
from pipeline.data.files import Arrays, save_arrays, sha256_array, sha256_file, write_json

log = logging.getLogger(__name__)


class FetchError(Exception):
    """No source gave verified data."""


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
        with tempfile.TemporaryDirectory(prefix="fetch-") as workdir:
            try:
                arrays = sources.read(source, data.download_timeout, Path(workdir))
                hashes = check_arrays(arrays, data.sha256)
            except sources.SourceError as error:
                log.info("source unavailable, trying the next: %s: %s", name, error)
                failures.append(f"{name}: {error}")
                continue
        log.info("verified %s", name)
        return name, arrays, hashes
    raise FetchError(f"no {data.name} source verified: " + " | ".join(failures))


def run(params: config.Params) -> FetchResult:
    """Write the verified arrays and a manifest (source, array and file hashes)."""
    name, arrays, hashes = first_verified(params.data)
    raw_file = Path(params.paths.raw_data)
    save_arrays(raw_file, {key: arrays[key].astype("uint8", copy=False) for key in sources.SPLITS})
    manifest = {
        "source": name,
        "arrays_sha256": hashes,
        "raw_data_sha256": sha256_file(raw_file),
        "counts": {key: int(arrays[key].shape[0]) for key in ("x_train", "x_test")},
    }
    write_json(params.paths.raw_manifest, manifest)
    log.info(
        "wrote %s (%d train, %d test images) from %s", raw_file, *manifest["counts"].values(), name
    )
    return FetchResult(name, manifest)


def main(argv: list[str] | None = None) -> None:
    stage.run_stage(run, argv, __doc__, expected=(FetchError,))


if __name__ == "__main__":
    main()
