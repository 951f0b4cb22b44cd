"""TLS, client certificates, basic auth and the in-flight limit on a real gpu-exporter process."""

from __future__ import annotations

import subprocess
import sys
import threading

import bcrypt
import pytest
import requests
import trustme
import yaml

from simulator.fakenvml import scenario as fake
from simulator.proc import wait_http


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
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)


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


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"basic_auth_user": {"a": "b"}}, "unknown key(s) basic_auth_user"),
        ({"basic_auth_users": {"a": "plain"}}, "not a bcrypt hash"),
        ({"tls_server_config": {"cert_file": "x.pem"}}, "key_file is required"),
        (
            {"tls_server_config": {"cert_file": "x", "key_file": "x", "min_version": "SSL3"}},
            "min_version",
        ),
        ({"tls_server_config": {"cert_file": "missing.pem", "key_file": "missing.pem"}}, "TLS"),
    ],
)
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
