"""The web configuration parser called directly: every refusal a starting process would print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from servicekit.webconfig import WebConfigError, load_web_config
from tests.support.webconfig import BAD_WEB_CONFIGS

pytestmark = pytest.mark.unit


def _write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "web-config.yml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(("document", "message"), BAD_WEB_CONFIGS)
def test_bad_web_config_is_refused_naming_the_field(
    tmp_path: Path, document: dict[str, Any], message: str
) -> None:
    with pytest.raises(WebConfigError) as caught:
        load_web_config(_write(tmp_path, document))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("basic_auth_users: [a\n", "is not valid YAML"),
        ("- just\n- a list\n", "web-config.yml must be a mapping"),
        ("http_server_config: [1]\n", "web-config.yml: http_server_config must be a mapping"),
        ("tls_server_config: {cert_file: x, key_file: x, bogus: 1}\n", "unknown key(s) bogus"),
        (
            "tls_server_config: {cert_file: x, key_file: x, client_auth_type: Sometimes}\n",
            "client_auth_type 'Sometimes' is not one of",
        ),
        (
            "tls_server_config: {cert_file: x, key_file: x,"
            " client_auth_type: RequireAndVerifyClientCert}\n",
            "client_auth_type RequireAndVerifyClientCert needs client_ca_file",
        ),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(WebConfigError) as caught:
        load_web_config(_write(tmp_path, text))
    assert message in str(caught.value)


def test_a_missing_file_is_refused_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yml"
    with pytest.raises(WebConfigError) as caught:
        load_web_config(missing)
    assert str(caught.value).startswith(f"cannot read web config {missing}: ")


def test_an_empty_file_is_no_tls_no_users(tmp_path: Path) -> None:
    config = load_web_config(_write(tmp_path, ""))
    assert (config.tls, config.users, config.headers) == (None, {}, {})


def test_users_headers_are_read_and_htpasswd_hashes_normalised(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    document = {
        "basic_auth_users": {"prom": "$2y$" + hashed[4:], "api": hashed},
        "http_server_config": {"headers": {"X-Frame-Options": "DENY"}},
    }
    config = load_web_config(_write(tmp_path, document))
    assert config.users == {"prom": hashed.encode(), "api": hashed.encode()}
    assert bcrypt.checkpw(b"pw", config.users["prom"])
    assert config.headers == {"X-Frame-Options": "DENY"}
    assert config.tls is None
