"""The web config file is re-read by a running gpu-exporter: users and certificates rotate live."""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import bcrypt
import pytest
import requests
import trustme
import yaml

from simulator.exporters import ExporterProcess
from simulator.fakenvml import scenario as fake
from simulator.proc import wait_http, wait_until

# The exporter looks at the file at most once a second; generous for a loaded machine.
RELOAD_TIMEOUT = 15.0


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def replace(path: Path, data: bytes) -> None:
    """Write ``data`` atomically, as configuration management tools do."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_config(path: Path, document: dict) -> None:
    replace(path, yaml.safe_dump(document).encode())


@pytest.fixture
def auth_exporter(exporter_factory, tmp_path) -> tuple[ExporterProcess, Path]:  # type: ignore[no-untyped-def]
    config = tmp_path / "web-config.yml"
    write_config(config, {"basic_auth_users": {"prom": bcrypt_hash("old")}})
    exporter = exporter_factory(fake.idle(1), "--web-config-file", str(config), wait_ready=False)
    wait_http(f"{exporter.url}/-/ready")
    return exporter, config


def status_with(exporter: ExporterProcess, auth: tuple[str, str]) -> int:
    return requests.get(f"{exporter.url}/metrics", auth=auth, timeout=5).status_code


def test_a_user_added_to_the_file_works_without_restart(auth_exporter):
    exporter, config = auth_exporter
    assert status_with(exporter, ("grafana", "new")) == 401
    users = {"prom": bcrypt_hash("old"), "grafana": bcrypt_hash("new")}
    write_config(config, {"basic_auth_users": users})
    wait_until(
        lambda: status_with(exporter, ("grafana", "new")) == 200,
        timeout=RELOAD_TIMEOUT,
        what="the new user to be accepted",
    )
    assert status_with(exporter, ("prom", "old")) == 200
    assert "web-config.yml reloaded" in exporter.log()


def test_a_broken_file_keeps_the_previous_config_and_logs_one_error(auth_exporter):
    exporter, config = auth_exporter
    replace(config, b"basic_auth_users: {prom: [unclosed\n")

    def logged_errors() -> int:
        return exporter.log().count("web config not reloaded")

    wait_until(
        lambda: status_with(exporter, ("prom", "old")) == 200 and logged_errors(),
        timeout=RELOAD_TIMEOUT,
        what="the error line",
    )
    # More requests over more than the check interval: the same broken file is not reported again.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert status_with(exporter, ("prom", "old")) == 200
        assert status_with(exporter, ("prom", "guess")) == 401
        time.sleep(0.2)
    assert logged_errors() == 1, exporter.log()
    assert "not valid YAML" in exporter.log()
    # Fixed again, it is taken.
    write_config(config, {"basic_auth_users": {"prom": bcrypt_hash("fixed")}})
    wait_until(
        lambda: status_with(exporter, ("prom", "fixed")) == 200,
        timeout=RELOAD_TIMEOUT,
        what="the fixed file to be taken",
    )


def test_a_reload_never_turns_basic_auth_off(auth_exporter):
    # What a half-written file can look like: valid, but without its users.
    exporter, config = auth_exporter
    write_config(config, {"http_server_config": {"headers": {"X-Frame-Options": "deny"}}})
    # The file is looked at on requests, so keep asking.
    wait_until(
        lambda: (
            status_with(exporter, ("prom", "old")) == 200
            and "turning basic auth off needs a restart" in exporter.log()
        ),
        timeout=RELOAD_TIMEOUT,
        what="the refusal to be logged",
    )
    anonymous = requests.get(f"{exporter.url}/metrics", timeout=5)
    assert anonymous.status_code == 401
    assert "X-Frame-Options" not in anonymous.headers


def served_certificate(port: int, ca_file: Path) -> bytes:
    """The DER certificate a new TLS connection to ``port`` gets (verified against ``ca_file``)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def leaf_der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def test_a_rotated_certificate_is_served_to_new_connections(exporter_factory, tmp_path):
    old_ca, new_ca = trustme.CA(), trustme.CA()
    both = tmp_path / "both-cas.pem"
    both.write_bytes(old_ca.cert_pem.bytes() + new_ca.cert_pem.bytes())
    old, new = old_ca.issue_cert("127.0.0.1"), new_ca.issue_cert("127.0.0.1")
    server_pem = tmp_path / "server.pem"
    old.private_key_and_cert_chain_pem.write_to_path(server_pem)
    config = tmp_path / "web-config.yml"
    write_config(
        config, {"tls_server_config": {"cert_file": "server.pem", "key_file": "server.pem"}}
    )
    exporter = exporter_factory(
        fake.idle(1), "--web-config-file", str(config), scheme="https", wait_ready=False
    )
    wait_http(f"{exporter.url}/-/ready", verify=str(both))
    assert served_certificate(exporter.port, both) == leaf_der(old)
    # Only the certificate file changes; the web config file itself stays as it is.
    replace(server_pem, new.private_key_and_cert_chain_pem.bytes())
    wait_until(
        lambda: served_certificate(exporter.port, both) == leaf_der(new),
        timeout=RELOAD_TIMEOUT,
        what="the new certificate",
    )
    new_ca.cert_pem.write_to_path(tmp_path / "new-ca.pem")
    response = requests.get(
        f"{exporter.url}/metrics", verify=str(tmp_path / "new-ca.pem"), timeout=5
    )
    assert response.status_code == 200
