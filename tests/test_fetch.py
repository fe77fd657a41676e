"""fetch: first verified source wins, failures are listed, the manifest records what was used."""

import numpy as np
import pytest
import yaml

from pipeline import fetch
from pipeline.data.files import load_arrays, read_json, sha256_file
from pipeline.params import config

from .support import array_hashes, free_port


def test_falls_through_to_the_first_source_that_verifies(raw_params, mirror, mnist, tmp_path):
    raw_params["data"]["sources"] = [
        {"kind": "url", "url": f"http://127.0.0.1:{free_port()}/m.npz", "sha256": "0" * 64},
        {"kind": "local", "path": str(tmp_path / "absent.npz")},
        {"kind": "local", "path": str(mirror)},
    ]
    result = fetch.run(config.parse_params(raw_params))
    assert result.source == f"local {mirror}"
    written = load_arrays(tmp_path / "data/raw/mnist.npz")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert written[name].dtype == np.uint8
        assert np.array_equal(written[name], mnist[name])
    manifest = read_json(tmp_path / "data/raw/manifest.json")
    assert manifest["arrays_sha256"] == array_hashes(mnist)
    assert manifest["raw_data_sha256"] == sha256_file(tmp_path / "data/raw/mnist.npz")
    assert manifest["source"] == result.source


def test_arrays_that_are_not_the_expected_mnist_are_refused(raw_params, tmp_path):
    raw_params["data"]["sha256"]["y_test"] = "a" * 64
    with pytest.raises(fetch.FetchError, match="checksum mismatch for array y_test"):
        fetch.run(config.parse_params(raw_params))
    assert not (tmp_path / "data/raw/mnist.npz").exists()


def test_when_all_fail_main_exits_with_one_line_listing_each_source_and_why(raw_params, tmp_path):
    port = free_port()
    raw_params["data"]["sources"] = [
        {"kind": "url", "url": f"http://127.0.0.1:{port}/m.npz", "sha256": "0" * 64},
        {"kind": "local", "path": str(tmp_path / "absent")},
    ]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw_params))
    with pytest.raises(SystemExit) as stop:
        fetch.main(["--params", str(params_file)])
    message = str(stop.value)
    assert message.startswith("error: no MNIST source verified: ") and "\n" not in message
    assert f"url http://127.0.0.1:{port}/m.npz: download failed" in message
    assert f"local {tmp_path / 'absent'}: {tmp_path / 'absent'} does not exist" in message
