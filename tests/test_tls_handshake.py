"""TLS handshakes against the real exporter: a silent or slow client cannot hold up the others.

Attackers connect from 127.0.0.2 (all of 127/8 is loopback on Linux) and never finish a
handshake; the well-behaved clients use 127.0.0.1 and open a new connection for every request, as
a health probe does, so each of them goes through the server's accept loop.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
import trustme
import yaml

from servicekit.limits import DEFAULT_MAX_REQUESTS_PER_CLIENT, HANDSHAKE_TIMEOUT, REFUSAL_TIMEOUT
from simulator.exporters import ClientAddresses
from simulator.fakenvml import scenario as fake
from simulator.proc import wait_http
from tests.support.attackers import ATTACKER, AttackingClients, connect, scrape_during


@pytest.fixture
def tls_exporter(exporter_factory, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An exporter serving HTTPS, and the CA file that verifies it."""
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "srv.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    config = tmp_path / "web.yml"
    section = {"cert_file": "srv.pem", "key_file": "srv.pem"}
    config.write_text(yaml.safe_dump({"tls_server_config": section}))
    exporter = exporter_factory(
        fake.idle(1), "--web-config-file", str(config), scheme="https", wait_ready=False
    )
    ca_file = str(tmp_path / "ca.pem")
    wait_http(f"{exporter.url}/-/ready", verify=ca_file)
    return exporter, ca_file


def _seconds_until_closed(sock: socket.socket, *, trickle: bytes = b"") -> float:
    """How long the server keeps ``sock`` open, sending ``trickle`` a byte every 0.5 s."""
    started = time.monotonic()
    sock.settimeout(0.5)
    with contextlib.suppress(ConnectionError):
        for byte in trickle:
            with contextlib.suppress(socket.timeout):
                if sock.recv(1) == b"":
                    return time.monotonic() - started
            sock.send(bytes([byte]))
        sock.settimeout(30)
        sock.recv(1)  # an alert, an end or a reset: nothing that continues a handshake
    return time.monotonic() - started


class SilentClients(AttackingClients):
    """Connections that never send a ClientHello."""

    pause = 0.1

    def attack(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(socket.timeout):
                if sock.recv(1) == b"":
                    return  # closed by the server: connect again


@pytest.mark.slow
def test_silent_tls_clients_do_not_delay_other_connections(tls_exporter) -> None:
    exporter, ca_file = tls_exporter
    with SilentClients(exporter.port, n=20, source=ATTACKER) as attack:
        time.sleep(1)  # every attacker is connected and silent
        # a new connection each time: through the accept loop and a handshake
        results = scrape_during(exporter.url, 14, verify=ca_file, keep_alive=False)
    failures = [r for r in results if r[1] != 200 or r[2] > 1]
    assert not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:10]}"
    assert len(results) > 20
    assert attack.connections >= 20
    assert exporter.process.alive()


@pytest.mark.parametrize(
    "trickle",
    [b"", b"\x16\x03\x01\x02\x00" + b"\x01" * 40],
    ids=["silent", "client-hello-a-byte-every-half-second"],
)
def test_a_handshake_that_never_completes_is_dropped_at_its_deadline(
    tls_exporter, trickle: bytes
) -> None:
    exporter, _ = tls_exporter
    with connect(exporter.port, source=ATTACKER, timeout=30) as sock:
        held = _seconds_until_closed(sock, trickle=trickle)
    # The deadline covers the whole handshake; the connection timeout (10 s) is much longer.
    assert HANDSHAKE_TIMEOUT - 0.5 < held < HANDSHAKE_TIMEOUT + 4, held


def _tls_get(port: int, ca_file: str, *, source: str) -> requests.Response:
    session = ClientAddresses().session(source)
    return session.get(f"https://127.0.0.1:{port}/metrics", verify=ca_file, timeout=10)


def _silent(port: int, n: int) -> list[socket.socket]:
    return [connect(port, source=ATTACKER, timeout=30) for _ in range(n)]


def test_a_client_over_its_share_is_answered_503_over_tls(tls_exporter) -> None:
    exporter, ca_file = tls_exporter
    silent = _silent(exporter.port, DEFAULT_MAX_REQUESTS_PER_CLIENT)
    try:
        time.sleep(0.5)  # each one holds a slot, waiting for its ClientHello
        # An HTTP answer through a completed handshake, not a connection closed in its face.
        response = _tls_get(exporter.port, ca_file, source=ATTACKER)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert "address" in response.json()["error"]
        # Another client's slots are its own.
        assert _tls_get(exporter.port, ca_file, source="127.0.0.1").status_code == 200
    finally:
        for sock in silent:
            sock.close()
    assert _tls_get(exporter.port, ca_file, source=ATTACKER).status_code == 200


def test_silent_connections_over_the_share_hold_no_worker_thread(tls_exporter) -> None:
    exporter, ca_file = tls_exporter
    # More than the server has threads (--web.max-requests 40 + its share + 4): if a refused
    # connection held a thread until its deadline, the other client would find none.
    silent = _silent(exporter.port, DEFAULT_MAX_REQUESTS_PER_CLIENT + 80)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        for _ in range(10):  # a new connection each: the accept loop and a handshake each time
            assert requests.get(f"{exporter.url}/-/healthy", verify=ca_file, timeout=2).ok
        assert time.monotonic() - started < 5
        # The refused ones are dropped at their deadline (handshake and head), not kept for ever.
        over = silent[-1]
        held = _seconds_until_closed(over)
        assert held < REFUSAL_TIMEOUT + 2, held
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.parametrize("over_the_share", [False, True], ids=["within", "over-the-share"])
def test_plain_http_to_the_tls_port_is_400_saying_so(tls_exporter, over_the_share: bool) -> None:
    exporter, _ = tls_exporter
    silent = _silent(exporter.port, DEFAULT_MAX_REQUESTS_PER_CLIENT if over_the_share else 0)
    try:
        time.sleep(0.3)
        with connect(exporter.port, source=ATTACKER) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    finally:
        for held in silent:
            held.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert answer.endswith(b"\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
