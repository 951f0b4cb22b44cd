"""TLS, client certificates, basic auth and the in-flight limit on a real gpu-exporter process."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import bcrypt
import pytest
import requests
import trustme
import yaml

from simulator.fakenvml import scenario as fake
from simulator.proc import wait_http
from tests.support.webconfig import BAD_WEB_CONFIGS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_web_config(tmp_path, document: dict) -> str:
    path = tmp_path / "web-config.yml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def htpasswd_hash(password: str, *, rounds: int = 4, prefix: str = "$2y$") -> str:
    """A bcrypt hash as htpasswd -B writes it ($2y$) or as Python's bcrypt does ($2b$)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return prefix + hashed[4:]


@pytest.mark.parametrize("prefix", ["$2y$", "$2b$", "$2a$"])
def test_basic_auth_guards_everything_but_health(exporter_factory, tmp_path, prefix):
    config = write_web_config(
        tmp_path, {"basic_auth_users": {"prom": htpasswd_hash("s3cret", prefix=prefix)}}
    )
    exporter = exporter_factory(fake.idle(1), "--web-config-file", config, wait_ready=False)
    wait_http(f"{exporter.url}/-/ready")
    anonymous = requests.get(f"{exporter.url}/metrics", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    wrong = requests.get(f"{exporter.url}/metrics", auth=("prom", "guess"), timeout=5)
    assert wrong.status_code == 401
    unknown_user = requests.get(f"{exporter.url}/metrics", auth=("root", "s3cret"), timeout=5)
    assert unknown_user.status_code == 401
    good = requests.get(f"{exporter.url}/metrics", auth=("prom", "s3cret"), timeout=5)
    assert good.status_code == 200 and "gpu_up" in good.text
    legacy = requests.post(
        f"{exporter.url}/get-status",
        json={"passwd": exporter.password},
        auth=("prom", "s3cret"),
        timeout=5,
    )
    assert legacy.status_code == 200
    assert requests.get(f"{exporter.url}/-/healthy", timeout=5).status_code == 200


def test_tls_serves_https_only(exporter_factory, tmp_path, ca):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    config = write_web_config(
        tmp_path,
        {"tls_server_config": {"cert_file": "server.pem", "key_file": "server.pem"}},
    )
    exporter = exporter_factory(
        fake.idle(1), "--web-config-file", config, scheme="https", wait_ready=False
    )
    wait_http(f"{exporter.url}/-/ready", verify=str(tmp_path / "ca.pem"))
    response = requests.get(f"{exporter.url}/metrics", verify=str(tmp_path / "ca.pem"), timeout=5)
    assert response.status_code == 200 and "gpu_up" in response.text
    # Plain HTTP is answered, as by Go's servers, with a 400 saying what went wrong; no metrics.
    plain = requests.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)
    assert plain.status_code == 400
    assert plain.text == "Client sent an HTTP request to an HTTPS server.\n"


def test_client_certificates_are_required_when_configured(exporter_factory, tmp_path, ca):
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "srv.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    client = ca.issue_cert("prometheus@example.org")
    client.private_key_and_cert_chain_pem.write_to_path(tmp_path / "client.pem")
    config = write_web_config(
        tmp_path,
        {
            "tls_server_config": {
                "cert_file": "srv.pem",
                "key_file": "srv.pem",
                "client_ca_file": "ca.pem",
                "client_auth_type": "RequireAndVerifyClientCert",
                "min_version": "TLS12",
            }
        },
    )
    exporter = exporter_factory(
        fake.idle(1), "--web-config-file", config, scheme="https", wait_ready=False
    )
    ca_file = str(tmp_path / "ca.pem")
    wait_http(f"{exporter.url}/-/ready", verify=ca_file, cert=str(tmp_path / "client.pem"))
    with pytest.raises(requests.RequestException):
        requests.get(f"{exporter.url}/metrics", verify=ca_file, timeout=5)
    response = requests.get(
        f"{exporter.url}/metrics", verify=ca_file, cert=str(tmp_path / "client.pem"), timeout=5
    )
    assert response.status_code == 200


def test_a_verified_client_certificate_has_its_own_password_limit(exporter_factory, tmp_path, ca):
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "srv.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    for name in ("status-api", "guesser"):
        cert = ca.issue_cert(f"{name}@example.org")
        cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / f"{name}.pem")
    config = write_web_config(
        tmp_path,
        {
            "tls_server_config": {
                "cert_file": "srv.pem",
                "key_file": "srv.pem",
                "client_ca_file": "ca.pem",
                "client_auth_type": "VerifyClientCertIfGiven",
            }
        },
    )
    exporter = exporter_factory(
        fake.idle(1), "--web-config-file", config, scheme="https", wait_ready=False
    )
    ca_file = str(tmp_path / "ca.pem")
    wait_http(f"{exporter.url}/-/ready", verify=ca_file)

    def post(password: str, cert: str | None) -> requests.Response:
        return requests.post(
            f"{exporter.url}/get-status",
            json={"passwd": password},
            verify=ca_file,
            cert=str(tmp_path / f"{cert}.pem") if cert else None,
            timeout=5,
        )

    # All three clients connect from 127.0.0.1.
    guesses = [post("guess", "guesser").status_code for _ in range(7)]
    assert guesses == [403] * 5 + [429] * 2
    anonymous = [post("guess", None).status_code for _ in range(7)]
    assert anonymous == [403] * 5 + [429] * 2
    assert post(exporter.password, "status-api").status_code == 200


@pytest.mark.parametrize(("document", "message"), BAD_WEB_CONFIGS)
def test_bad_web_config_stops_the_exporter_with_a_clear_error(
    fake_nvml, tmp_path, document, message
):
    config = write_web_config(tmp_path, document)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--port", "0", "--web-config-file", config],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _tls_exporter(  # type: ignore[no-untyped-def]
    exporter_factory,
    tmp_path: Path,
    ca: trustme.CA,
    *,
    key_type: trustme.KeyType = trustme.KeyType.ECDSA,
    **tls: object,
):
    """An exporter serving HTTPS with ``tls`` added to its tls_server_config."""
    server = ca.issue_cert("127.0.0.1", key_type=key_type)
    server.private_key_and_cert_chain_pem.write_to_path(tmp_path / "srv.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    section = {"cert_file": "srv.pem", "key_file": "srv.pem", **tls}
    config = write_web_config(tmp_path, {"tls_server_config": section})
    exporter = exporter_factory(
        fake.idle(1), "--web-config-file", config, scheme="https", wait_ready=False
    )
    wait_http(f"{exporter.url}/-/ready", verify=str(tmp_path / "ca.pem"))
    return exporter


def handshake(
    port: int,
    ca_file: Path,
    *,
    ciphers: str | None = None,
    curve: str | None = None,
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> str:
    """Connect over TLS, ask /-/healthy, and return the negotiated cipher (OpenSSL's name)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.maximum_version = max_version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if curve is not None:
        context.set_ecdh_curve(curve)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.1 200")
        return tls.cipher()[0]


def test_configured_cipher_suite_is_the_one_negotiated(exporter_factory, tmp_path, ca):
    # Not what the client would pick from its defaults (an AES-GCM suite), so only the
    # server's configuration can make the handshake land on it.
    exporter = _tls_exporter(
        exporter_factory,
        tmp_path,
        ca,
        cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"],
    )
    ca_file = tmp_path / "ca.pem"
    assert handshake(exporter.port, ca_file) == "ECDHE-ECDSA-AES128-SHA256"
    with pytest.raises(ssl.SSLError):
        handshake(exporter.port, ca_file, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")


_AES128 = ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256")
_AES256 = ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384")


# Each layout lands on AES-128 only if the option is applied: by default the server's own order,
# which puts AES-256 first, would win.
@pytest.mark.parametrize(
    ("prefer", "server_order", "client_order"),
    [
        (True, [_AES128, _AES256], [_AES256, _AES128]),
        (False, [_AES256, _AES128], [_AES128, _AES256]),
    ],
)
def test_prefer_server_cipher_suites_decides_whose_order_wins(
    exporter_factory, tmp_path, ca, prefer, server_order, client_order
):
    exporter = _tls_exporter(
        exporter_factory,
        tmp_path,
        ca,
        cipher_suites=[go for go, _ in server_order],
        prefer_server_cipher_suites=prefer,
    )
    ciphers = ":".join(openssl for _, openssl in client_order)
    assert handshake(exporter.port, tmp_path / "ca.pem", ciphers=ciphers) == _AES128[1]


def test_curve_preferences_limit_the_key_exchange(exporter_factory, tmp_path, ca):
    # An RSA certificate: with TLS 1.2, OpenSSL also requires an ECDSA certificate's own curve
    # among the client's groups, which would blur what this test looks at.
    exporter = _tls_exporter(
        exporter_factory,
        tmp_path,
        ca,
        key_type=trustme.KeyType.RSA,
        curve_preferences=["CurveP384"],
    )
    ca_file = tmp_path / "ca.pem"
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        assert handshake(exporter.port, ca_file, curve="secp384r1", max_version=version)
        with pytest.raises(ssl.SSLError):
            handshake(exporter.port, ca_file, curve="prime256v1", max_version=version)


def test_requests_beyond_the_limit_get_503_at_once(exporter_factory, tmp_path):
    # A costly bcrypt hash keeps each authenticated request inside the limiter for a while.
    config = write_web_config(
        tmp_path, {"basic_auth_users": {"prom": htpasswd_hash("slow", rounds=13)}}
    )
    exporter = exporter_factory(
        fake.idle(1), "--web-config-file", config, "--web.max-requests", "1", wait_ready=False
    )
    wait_http(f"{exporter.url}/-/ready")
    codes: list[int] = []

    def scrape(password: str) -> None:
        response = requests.get(f"{exporter.url}/metrics", auth=("prom", password), timeout=30)
        codes.append(response.status_code)

    # Wrong passwords are never cached, so every request pays for bcrypt.
    threads = [threading.Thread(target=scrape, args=(f"wrong{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 503 in codes, codes
    assert 401 in codes, codes
