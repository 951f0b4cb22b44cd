"""What every part of the demo shares: its error, free ports, the environment of its children."""

from __future__ import annotations

import os
import socket


class DemoError(RuntimeError):
    """The demo cannot start; the message says what is missing or what failed."""


def pick_port(address: str, preferred: int) -> int:
    """``preferred`` if it is free on ``address`` (0: any), else a port the OS picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers do: a port with only closed connections of a past run is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise DemoError(f"no free port on {address}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a service it starts, plus ``extra``."""
    env = dict(os.environ)
    env.pop("GPU_MONITOR_PASSWORD", None)  # the password file is the one source
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env
