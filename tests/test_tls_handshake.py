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

from servicekit.limits import DEFAULT_MAX_REQUESTS_PER_CLIENT, HANDSHAKE_TIMEOUT
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


def test_connections_in_handshake_count_against_their_client(tls_exporter) -> None:
    exporter, ca_file = tls_exporter
    silent = [
        connect(exporter.port, source=ATTACKER, timeout=30)
        for _ in range(DEFAULT_MAX_REQUESTS_PER_CLIENT)
    ]
    try:
        time.sleep(0.5)  # each one holds a slot, waiting for its ClientHello
        with connect(exporter.port, source=ATTACKER, timeout=30) as extra:
            held = _seconds_until_closed(extra)
        assert held < HANDSHAKE_TIMEOUT / 2, held  # closed at once, not at the deadline
        # Another client's slots are its own.
        response = requests.get(f"{exporter.url}/-/healthy", verify=ca_file, timeout=5)
        assert response.status_code == 200
    finally:
        for sock in silent:
            sock.close()
