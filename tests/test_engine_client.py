"""The one query-engine client (status_api/engine.py), in process, against real HTTPS servers.

The service (``--prometheus-url``) and ``gpu-status-api report`` share its flags and checks, so the
same bad option gets the same words from both; the CA file is re-read when it changes, like the
basic-auth password file, so a rotated engine certificate needs no restart.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from status_api.arguments import build_parser as service_parser
from status_api.engine import EngineClient, EngineError, EngineSettings, engine_settings
from status_api.report import build_parser as report_parser

pytestmark = pytest.mark.unit

VECTOR = {
    "status": "success",
    "data": {"resultType": "vector", "result": [{"metric": {"user": "alice"}, "value": [0, "7"]}]},
}


class _Engine(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.dumps(VECTOR).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_engine() -> Iterator[tuple[str, trustme.CA]]:
    """An engine serving https with a certificate of its own CA (returned, to trust or not)."""
    ca = trustme.CA()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca
    finally:
        server.shutdown()
        server.server_close()


def _replace(path: Path, data: bytes) -> None:
    """Rewrite ``path`` as a configuration tool does: a new file renamed over the old one."""
    new = path.with_suffix(".new")
    new.write_bytes(data)
    os.replace(new, path)


def test_ca_file_is_reread_when_it_changes(https_engine, tmp_path):
    url, engine_ca = https_engine
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))  # not the engine's CA
    settings = EngineSettings(url=url, timeout=10, ca_file=ca_file)

    async def two_queries() -> tuple[str, list]:
        async with EngineClient(settings) as client:
            with pytest.raises(EngineError) as refused:
                await client.query("up", at=0)
            _replace(ca_file, engine_ca.cert_pem.bytes())
            return str(refused.value), await client.query("up", at=0)

    refusal, samples = asyncio.run(two_queries())
    assert "certificate" in refusal.lower(), refusal
    assert samples == [({"user": "alice"}, 7.0)]


def _error(parser, argv: list[str]) -> str:
    with pytest.raises(ValueError) as caught:
        engine_settings(parser.parse_args(argv))
    return str(caught.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prometheus-url", "ftp://h:9090"], "must be http:// or https:// with a host"),
        (["--prometheus-url", "http://u:p@h:9090"], "must not hold credentials"),
        (["--prometheus-url", "http://h:99999"], "has a bad port"),
        (["--prometheus-url", "http://h:9090/?a=b"], "must not have a query or fragment"),
        (["--prometheus-url", "http://h", "--prometheus-ca-file", "/x"], "needs an https://"),
        (["--prometheus-url", "https://h", "--prometheus-ca-file", "/nonexistent"], "no such file"),
        (["--prometheus-url", "http://h", "--prometheus-basic-auth-user", "u"], "go together"),
        (
            ["--prometheus-url", "http://h", "--prometheus-basic-auth-user", "u:v",
             "--prometheus-basic-auth-password-file", "/nonexistent"],
            "must not contain ':'",
        ),
        (
            ["--prometheus-url", "http://h", "--prometheus-basic-auth-user", "u",
             "--prometheus-basic-auth-password-file", "/nonexistent"],
            "--prometheus-basic-auth-password-file: cannot read",
        ),
    ],
)  # fmt: skip
def test_service_and_report_refuse_the_same_options_in_the_same_words(argv, message):
    service = _error(service_parser(), argv)
    report = _error(report_parser(), argv)
    assert message in service, service
    assert service == report


def test_bad_ca_file_is_a_startup_error(tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate\n")
    argv = ["--prometheus-url", "https://h:9090", "--prometheus-ca-file", str(ca_file)]
    assert "cannot load --prometheus-ca-file" in _error(service_parser(), argv)
