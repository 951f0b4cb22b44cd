"""Hostile clients on raw sockets, and the well-behaved scrapes measured while they attack.

Attackers connect from :data:`ATTACKER` (all of 127/8 is loopback on Linux) while the
well-behaved clients use 127.0.0.1, so per-address limits tell them apart.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import requests

ATTACKER = "127.0.0.2"

Result = tuple[str, "int | str", float]  # path, status (or the error's name), seconds


def connect(port: int, *, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from ``source``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


class AttackingClients:
    """``n`` connections from ``source``, each running :meth:`attack` until the server closes it
    or the block ends; a closed connection is opened again after ``pause`` seconds, so the
    pressure lasts. ``connections`` counts the connections made."""

    pause = 0.2

    def __init__(self, port: int, *, n: int, source: str) -> None:
        self._port = port
        self._source = source
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        self._lock = threading.Lock()
        self.connections = 0

    def attack(self, sock: socket.socket, stop: threading.Event) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError), connect(self._port, source=self._source) as sock:
                with self._lock:
                    self.connections += 1
                self.attack(sock, self._stop)
            self._stop.wait(self.pause)

    def __enter__(self) -> AttackingClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


def scrape_during(
    url: str, seconds: float, *, verify: str | bool = True, keep_alive: bool = True
) -> list[Result]:
    """Ask ``/metrics`` and ``/-/healthy`` for ``seconds``, four times a second, as Prometheus
    (one kept-alive connection) or a health probe (``keep_alive=False``: a new connection, and
    so the server's accept loop and any TLS handshake, every time) does."""
    results: list[Result] = []
    session = requests.Session()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for path in ("/metrics", "/-/healthy"):
            started = time.monotonic()
            try:
                asker = session if keep_alive else requests
                outcome: int | str = asker.get(url + path, verify=verify, timeout=1).status_code
            except requests.RequestException as error:
                outcome = type(error).__name__
            results.append((path, outcome, time.monotonic() - started))
        time.sleep(0.25)
    return results
