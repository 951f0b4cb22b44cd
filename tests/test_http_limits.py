"""Request bodies and slow clients against the real processes: the limits both services share.

Hostile clients are raw sockets, so a test can send what no HTTP library would: a negative
Content-Length, a body one byte at a time, a chunked body that never ends. Attackers connect from
127.0.0.2 (all of 127/8 is loopback on Linux) while the well-behaved clients use 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Callable

import pytest
import requests

from exporter.app import ExporterApp
from exporter.snapshot import Snapshot
from servicekit.limits import BODY_TIMEOUT, MAX_BODY_BYTES, BodyError, client_of, declared_length
from servicekit.middleware import InFlightLimit
from servicekit.password import PasswordSource
from simulator.fakenvml import scenario as fake
from tests.support.attackers import ATTACKER, AttackingClients, connect, scrape_during

MIB = 1024 * 1024


def _head(path: str, *headers: str, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", *headers, "", ""]
    return "\r\n".join(lines).encode()


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of the one response on ``sock`` (read until the server closes)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    assert match, data[:200]
    return int(match.group(1)), data.partition(b"\r\n\r\n")[2]


def _peak_rss(pid: int) -> int:
    """VmHWM, the process's peak resident memory, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _answered(sock: socket.socket) -> bool:
    """Whether the server has answered or closed ``sock``, without waiting."""
    readable, _, _ = select.select([sock], [], [], 0)  # an answer, an end or a reset
    return bool(readable)


def _send_quietly(sock: socket.socket, data: bytes) -> int:
    """Send ``data``; how many bytes went out before the server closed (it may stop reading)."""
    sent = 0
    with contextlib.suppress(OSError):
        while sent < len(data):
            sent += sock.send(data[sent : sent + 65536])
    return sent


# ---- units: what the shared layer accepts ------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "+5", " 5", "5 ", "1_0", "0x10", "5.0", "٣", ""])
def test_content_length_must_be_plain_digits(value: str) -> None:
    with pytest.raises(BodyError) as refused:
        declared_length(value, limit=MAX_BODY_BYTES)
    assert refused.value.status.startswith("400")
    assert "Content-Length" in refused.value.message


def test_content_length_over_the_cap_is_413_without_converting_huge_numbers() -> None:
    assert declared_length("4096", limit=4096) == 4096
    assert declared_length("0", limit=4096) == 0
    for value in ("4097", "9" * 5000):
        with pytest.raises(BodyError) as refused:
            declared_length(value, limit=4096)
        assert refused.value.status.startswith("413")


@pytest.mark.parametrize(
    ("address", "client"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("", ""),
    ],
)
def test_clients_are_addresses_and_ipv6_slash_64(address: str, client: str) -> None:
    assert client_of(address) == client


def test_exporter_app_refuses_a_length_that_is_not_digits_without_reading() -> None:
    # The app's own check, for when it is served by something other than make_server.
    passwords = PasswordSource(password_file=None)
    app = ExporterApp(latest=_no_snapshot, ready=lambda: True, passwords=passwords)
    statuses: list[str] = []
    for value in ("-1", "+16", "1_6"):
        stream = BytesIO(b'{"passwd":"8888"}' + b"x" * 100_000)
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/get-status",
            "REMOTE_ADDR": "192.0.2.1",
            "CONTENT_LENGTH": value,
            "wsgi.input": stream,
        }
        body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
        assert statuses.pop().startswith("400"), (value, body)
        assert "Content-Length" in json.loads(body)["error"]
        assert stream.tell() == 0


def _no_snapshot() -> Snapshot:
    raise AssertionError("a refused request must not render a snapshot")


# ---- bodies through the real exporter -----------------------------------------------------------


def test_negative_content_length_is_400_and_the_body_is_not_read(exporter_factory) -> None:
    exporter = exporter_factory(fake.idle(1))
    pid = exporter.process.pid
    before = _peak_rss(pid)
    sock = connect(exporter.port)
    sock.sendall(_head("/get-status", "Content-Length: -1", "Content-Type: application/json"))
    sent = _send_quietly(sock, b"x" * (64 * MIB))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)  # the end of the stream, where the old code stopped reading
    status, body = _response(sock)
    sock.close()
    assert status == 400, body
    assert "Content-Length" in json.loads(body)["error"]
    grown = _peak_rss(pid) - before
    assert grown < 8 * MIB, f"peak RSS grew {grown / MIB:.1f} MiB while {sent} bytes were sent"
    assert exporter.status()["gpus"], "still serves afterwards"


def test_content_length_that_is_not_digits_is_400(exporter_factory) -> None:
    exporter = exporter_factory(fake.idle(1))
    document = json.dumps({"passwd": exporter.password}).encode()
    n = len(document)
    # int() takes the first two (and the old exporter answered 200); cheroot refuses the last.
    for value in (f"+{n}", f"{n // 10}_{n % 10}", "abc"):
        sock = connect(exporter.port)
        sock.sendall(_head("/get-status", f"Content-Length: {value}") + document)
        status, body = _response(sock)
        sock.close()
        assert status == 400, (value, body)


def test_oversized_chunked_body_is_413_and_reads_stay_bounded(exporter_factory) -> None:
    exporter = exporter_factory(fake.idle(1))
    pid = exporter.process.pid
    before = _peak_rss(pid)
    sock = connect(exporter.port)
    sock.sendall(_head("/get-status", "Transfer-Encoding: chunked"))
    chunk = b"%x\r\n%s\r\n" % (1024, b"x" * 1024)
    sent = _send_quietly(sock, chunk * (32 * 1024))  # 32 MiB, never terminated
    status, body = _response(sock)
    sock.close()
    assert status == 413, body
    assert str(MAX_BODY_BYTES) in json.loads(body)["error"]
    grown = _peak_rss(pid) - before
    assert grown < 8 * MIB, f"peak RSS grew {grown / MIB:.1f} MiB while {sent} bytes were sent"


def test_chunked_body_within_the_cap_reaches_the_app(exporter_factory) -> None:
    exporter = exporter_factory(fake.idle(1))
    document = json.dumps({"passwd": exporter.password}).encode()
    sock = connect(exporter.port)
    half = len(document) // 2
    chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        half, document[:half], len(document) - half, document[half:],
    )  # fmt: skip
    sock.sendall(_head("/get-status", "Transfer-Encoding: chunked", "Connection: close") + chunks)
    status, body = _response(sock)
    sock.close()
    assert status == 200, body
    assert json.loads(body)["gpus"]


def test_content_length_and_chunked_together_are_400(exporter_factory) -> None:
    # Servers disagreeing on which one frames the body is how requests are smuggled.
    exporter = exporter_factory(fake.idle(1))
    document = json.dumps({"passwd": exporter.password}).encode()
    sock = connect(exporter.port)
    headers = (f"Content-Length: {len(document)}", "Transfer-Encoding: chunked")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(document), document)
    sock.sendall(_head("/get-status", *headers) + chunked)
    status, _ = _response(sock)
    sock.close()
    assert status == 400


def test_declared_length_is_never_drained_after_an_early_answer(exporter_factory) -> None:
    # POST /metrics is 405 without reading the body; cheroot would then read the declared length.
    exporter = exporter_factory(fake.idle(1))
    sock = connect(exporter.port)
    sock.sendall(_head("/metrics", f"Content-Length: {1024 * MIB}"))
    status, _ = _response(sock)
    sock.close()
    assert status == 413


def test_body_slower_than_the_deadline_is_408(exporter_factory) -> None:
    exporter = exporter_factory(fake.idle(1))
    sock = connect(exporter.port, timeout=BODY_TIMEOUT * 4)
    started = time.monotonic()
    sock.sendall(_head("/get-status", "Content-Length: 100"))
    # One byte a second: each read is quick, only the whole body is late.
    for _ in range(int(BODY_TIMEOUT * 3)):
        if _answered(sock):
            break
        sock.sendall(b"x")
        time.sleep(1)
    status, body = _response(sock)
    elapsed = time.monotonic() - started
    sock.close()
    assert status == 408, body
    assert BODY_TIMEOUT - 0.5 <= elapsed <= BODY_TIMEOUT + 5, elapsed


# ---- slow clients ------------------------------------------------------------------------------


class SlowClients(AttackingClients):
    """Connections sending a 4000-byte body one byte every ``interval`` seconds."""

    def __init__(self, port: int, *, n: int, source: str, interval: float = 4.0) -> None:
        super().__init__(port, n=n, source=source)
        self.interval = interval

    def attack(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(_head("/get-status", "Content-Length: 4000"))
        while not stop.wait(self.interval) and not _answered(sock):
            sock.sendall(b"x")


@pytest.mark.slow
def test_slow_bodies_from_one_address_do_not_starve_scrapes(exporter_factory) -> None:
    exporter = exporter_factory(fake.idle(2))
    with SlowClients(exporter.port, n=40, source=ATTACKER) as attack:
        time.sleep(1)  # every attacker is connected and waiting
        results = scrape_during(exporter.url, 20)
    failures = [r for r in results if r[1] != 200 or r[2] > 1]
    slowest = max(r[2] for r in results)
    assert not failures, f"{len(failures)} of {len(results)} scrapes failed: {failures[:10]}"
    print(f"{len(results)} scrapes under attack, slowest {slowest * 1000:.0f} ms")
    assert len(results) > 40
    assert attack.connections >= 40
    assert exporter.process.alive()


def test_health_checks_are_never_refused_by_the_in_flight_limit() -> None:
    release = threading.Event()

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"OK"]

    limited = InFlightLimit(app, 1)

    def call(path: str) -> str:
        statuses: list[str] = []
        body = limited({"PATH_INFO": path}, lambda status, headers: statuses.append(status))
        assert b"".join(body)
        return statuses[0]

    holder = threading.Thread(target=call, args=("/slow",))
    holder.start()
    try:
        time.sleep(0.2)  # the one slot is now taken
        assert call("/metrics").startswith("503")
        assert call("/-/healthy").startswith("200")
        assert call("/-/ready").startswith("200")
    finally:
        release.set()
        holder.join()
    assert call("/metrics").startswith("200")


def test_one_address_gets_503_beyond_its_cap(exporter_factory) -> None:
    exporter = exporter_factory(fake.idle(1), "--web.max-requests-per-client", "2")
    with SlowClients(exporter.port, n=2, source=ATTACKER, interval=0.5):
        time.sleep(0.5)
        sock = connect(exporter.port, source=ATTACKER)
        sock.sendall(_head("/metrics", method="GET"))
        status, body = _response(sock)
        sock.close()
        assert status == 503, body
        assert "address" in json.loads(body)["error"]
        assert requests.get(exporter.url + "/metrics", timeout=5).status_code == 200


def test_headers_slower_than_the_deadline_are_408(exporter_factory) -> None:
    exporter = exporter_factory(fake.idle(1))
    sock = connect(exporter.port, timeout=30)
    started = time.monotonic()
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    for _ in range(20):
        if _answered(sock):
            break
        sock.sendall(b"X-Slow: 1\r\n")
        time.sleep(1)
    status, _ = _response(sock)
    sock.close()
    assert status == 408
    assert time.monotonic() - started < 15


# ---- the status service runs on the same server ----------------------------------------------


@pytest.fixture
def status_service(status_service_factory) -> Iterator[object]:
    yield status_service_factory(["127.0.0.1:9"])


def test_status_service_never_reads_past_its_cap(status_service) -> None:
    port = status_service.port
    sock = connect(port)
    sock.sendall(_head("/get-status", "Content-Length: -1"))
    _send_quietly(sock, b"x" * MIB)
    assert _response(sock)[0] == 400
    sock.close()
    sock = connect(port)
    sock.sendall(_head("/get-status", "Transfer-Encoding: chunked"))
    _send_quietly(sock, b"%x\r\n%s\r\n" % (1024, b"x" * 1024) * 1024)
    assert _response(sock)[0] == 413
    sock.close()
    assert status_service.get("/-/healthy").status_code == 200
