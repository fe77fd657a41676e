"""Whether a server can listen on its port, asked before it loads anything: a busy port then
costs one line that says which command to run, not seconds of loading and a traceback."""

from __future__ import annotations

import errno
import socket

SUGGESTION_STEP = 10  # `make serve PORT=5011` for a busy 5001: the tens stay apart from 5002's
SUGGESTIONS = 10  # ports tried for that suggestion


class PortUnavailable(Exception):
    """The server cannot listen on its host and port; the message says what to do instead."""


def bind_once(host: str, port: int) -> None:
    """Bind `host`:`port` and let go at once, as uvicorn does (`Config.bind_socket`); OSError."""
    # SO_REUSEADDR: a port left in TIME_WAIT by a server that stopped a moment ago is free.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def is_free(host: str, port: int) -> bool:
    try:
        bind_once(host, port)
    except OSError:
        return False
    return True


def free_port_near(host: str, port: int) -> int:
    """The first free port of port+10, port+20, ... (port+10 if none of them is)."""
    tried = [port + SUGGESTION_STEP * step for step in range(1, SUGGESTIONS + 1)]
    return next((other for other in tried if other < 65536 and is_free(host, other)), tried[0])


def check_free(host: str, port: int, command: str) -> None:
    """PortUnavailable, naming `command` (`make serve`) with a free PORT=, unless it is free."""
    try:
        bind_once(host, port)
    except OverflowError:
        raise PortUnavailable(f"port {port}: a port is a number from 1 to 65535") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortUnavailable(
                f"port {port} on {host} is in use (another {command}?): stop it or pick "
                f"another, {command} PORT={free_port_near(host, port)}"
            ) from None
        reason = error.strerror or type(error).__name__  # an unknown host, a port under 1024
        raise PortUnavailable(f"cannot listen on {host} port {port}: {reason}") from None
