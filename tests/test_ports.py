"""A busy port: make serve, make demo and make ui stop with one line, before loading anything."""

import contextlib
import socket
from collections.abc import Iterator

import pytest

from pipeline.runtime import ports
from pipeline.serving import demo, serve
from pipeline.tools import ui

from .support import write_params


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port of 127.0.0.1 that another process would find taken: something listens on it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_a_busy_port_is_named_with_a_free_one_to_use_instead():
    with listening() as port:
        with pytest.raises(ports.PortUnavailable) as raised:
            ports.check_free("127.0.0.1", port, "make serve")
        suggested = int(str(raised.value).rsplit("PORT=", 1)[1])
    assert str(raised.value) == (
        f"port {port} on 127.0.0.1 is in use (another make serve?): stop it or pick another, "
        f"make serve PORT={suggested}"
    )
    assert suggested != port and ports.is_free("127.0.0.1", suggested)
    ports.check_free("127.0.0.1", port, "make serve")  # free again once its listener is gone
    with pytest.raises(ports.PortUnavailable, match="a port is a number from 1 to 65535"):
        ports.check_free("127.0.0.1", 70000, "make serve")


@pytest.mark.parametrize(
    ("main", "command", "model"),
    [(serve.main, "make serve", ["--model"]), (demo.main, "make demo", ["--model"]),
     (ui.main, "make ui", [])],
)  # fmt: skip
def test_the_port_is_checked_before_the_model_or_the_store(
    main, command, model, raw_params, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # a store would be made here: none must be
    params = write_params(raw_params, tmp_path / "params.yaml")
    missing = [*model, str(tmp_path / "missing.onnx")] if model else []  # would fail to load
    with listening() as port:
        with pytest.raises(SystemExit) as raised:
            main(["--params", str(params), *missing, "--port", str(port)])
    message = str(raised.value.code)
    assert message.startswith(
        f"error: port {port} on 127.0.0.1 is in use (another {command}?): stop it or pick another, "
        f"{command} PORT="
    )
    assert "\n" not in message and not (tmp_path / raw_params["mlflow"]["tracking_db"]).exists()
