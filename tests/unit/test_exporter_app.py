"""The exporter's WSGI app called directly: each route, status code and header, no server."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import MAX_BODY_BYTES, ExporterApp
from exporter.snapshot import Snapshot
from servicekit.limiter import FailureThrottle
from servicekit.password import PasswordSource
from tests.unit.builders import down_gpu, gpu, snapshot

pytestmark = pytest.mark.unit

PASSWORD = "s3cret"


class Response:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = int(status.split()[0])
        self.reason = status.split(" ", 1)[1]
        self.headers = dict(headers)
        self.header_list = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    app: Callable[..., Any],
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    remote: str = "10.0.0.1",
    content_length: str | None = None,
) -> Response:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "REMOTE_ADDR": remote,
        "wsgi.input": io.BytesIO(body),
    }
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    elif body:
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: list[tuple[str, list[tuple[str, str]]]] = []
    chunks = app(environ, lambda status, headers: started.append((status, headers)))
    ((status, response_headers),) = started
    return Response(status, response_headers, b"".join(chunks))


class Node:
    """An app over a snapshot the test can swap, and a readiness flag."""

    def __init__(self, tmp_path: Path, snap: Snapshot, *, burst: int = 5) -> None:
        self.snapshot = snap
        self.ready = True
        password_file = tmp_path / "password"
        password_file.write_text(PASSWORD + "\n")
        self.app = ExporterApp(
            latest=lambda: self.snapshot,
            ready=lambda: self.ready,
            passwords=PasswordSource(password_file=password_file),
            throttle=FailureThrottle(burst=burst, refill_per_second=0.001),
        )

    def __call__(self, method: str, path: str, **options: Any) -> Response:
        return call(self.app, method, path, **options)

    def status(self, body: bytes, **options: Any) -> Response:
        return self("POST", "/get-status", body=body, **options)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield Node(tmp_path, snapshot(gpu(0), down_gpu(1), hostname="gpu-a"))


def _password(password: object) -> bytes:
    return json.dumps({"passwd": password}).encode()


# ---- /metrics -----------------------------------------------------------------------------------


def test_metrics_in_the_text_format_with_exact_headers(node: Node) -> None:
    response = node("GET", "/metrics")
    assert (response.status, response.reason) == (200, "OK")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["Content-Length"] == str(len(response.body))
    assert response.headers["Vary"] == "Accept-Encoding"
    assert "Content-Encoding" not in response.headers
    families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}
    up = {s.labels["gpu"]: s.value for s in families["gpu_up"].samples}
    assert up == {"0": 1.0, "1": 0.0}
    (used,) = families["gpu_memory_used_bytes"].samples
    assert (used.labels["gpu"], used.value) == ("0", 1000 * 1024 * 1024)


def test_openmetrics_and_gzip_are_negotiated(node: Node) -> None:
    plain = node("GET", "/metrics").body
    accept = "application/openmetrics-text; version=1.0.0"
    open_metrics = node("GET", "/metrics", headers={"Accept": accept})
    assert open_metrics.headers["Content-Type"].startswith(
        "application/openmetrics-text; version=1.0.0"
    )
    assert open_metrics.body.endswith(b"# EOF\n")
    assert not plain.endswith(b"# EOF\n")
    zipped = node("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(zipped.body) == plain


def test_each_format_is_rendered_once_per_snapshot_and_never_mixed(node: Node) -> None:
    first = node("GET", "/metrics").body
    assert node("GET", "/metrics").body is first  # the cached bytes, not a new rendering
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    assert node("GET", "/metrics", headers=accept).body.endswith(b"# EOF\n")
    assert node("GET", "/metrics").body is first  # another format did not replace this one
    node.snapshot = snapshot(gpu(0, temperature_celsius=77.0), sequence=2)
    fresh = node("GET", "/metrics").body
    assert b'gpu_temperature_celsius{gpu="0",uuid="GPU-00000000-aaaa"} 77.0' in fresh


def test_an_unreadable_accept_header_gets_the_text_format(node: Node) -> None:
    accept = {"Accept": "application/openmetrics-text; version=1.x"}
    response = node("GET", "/metrics", headers=accept)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_head_has_the_length_but_no_body(node: Node) -> None:
    full = node("GET", "/metrics")
    head = node("HEAD", "/metrics")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["Content-Length"] == str(len(full.body))


# ---- legacy POST /get-status ------------------------------------------------------------------


def test_right_password_gets_the_legacy_json(node: Node) -> None:
    response = node.status(_password(PASSWORD))
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert list(document) == ["hostname", "last_update", "ips", "gpus"]
    assert document["hostname"] == "gpu-a"
    assert document["ips"] == [["eth0", "10.0.0.5"], ["ib0", "192.168.1.5"]]
    assert document["gpus"][0] == {
        "index": 0,
        "name": "NVIDIA A100-SXM4-80GB",
        "use_mem": 1000,
        "tot_mem": 81920,
        "utilize": 25,
        "temp": 40,
        "users": [
            {"pid": 1000, "username": "alice", "mem(MiB)": 512, "command": "python train.py"}
        ],
    }
    assert document["gpus"][1] == {
        "index": 1, "name": "NVIDIA A100", "use_mem": None, "tot_mem": None,
        "utilize": None, "temp": None, "users": [],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", 'missing JSON body {"passwd": "..."}'),
        (b"passwd=s3cret", "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b"[" * 5000, None),  # over the size limit: 413, checked below
        (b'["s3cret"]', "body must be a JSON object"),
        (b'{"password": "s3cret"}', 'body must have a string field "passwd"'),
        (b'{"passwd": 8888}', 'body must have a string field "passwd"'),
        (b"[" * 4000, "body is nested too deeply to be JSON of the legacy request"),
    ],
)
def test_bad_bodies_are_400_with_the_reason(node: Node, body: bytes, message: str | None) -> None:
    response = node.status(body)
    if message is None:
        assert response.status == 413
        return
    assert response.status == 400
    assert response.json()["error"].startswith(message)


@pytest.mark.parametrize("length", ["-1", "+5", " 5", "1_0", "5x"])
def test_a_content_length_that_is_not_digits_is_400(node: Node, length: str) -> None:
    response = node.status(_password(PASSWORD), content_length=length)
    assert response.status == 400
    assert response.json() == {"error": f"invalid Content-Length {length!r}: not digits"}


def test_bodies_over_the_limit_are_413_unread(node: Node) -> None:
    declared = node.status(b"", content_length=str(MAX_BODY_BYTES + 1))
    assert declared.status == 413
    assert declared.json() == {"error": f"request body over {MAX_BODY_BYTES} bytes"}
    chunked = node.status(
        b"x" * (MAX_BODY_BYTES + 1), content_length="", headers={"Transfer-Encoding": "chunked"}
    )
    assert chunked.status == 413
    # A body of exactly the limit is read and judged.
    padded = json.dumps({"passwd": PASSWORD, "pad": "x" * 4000}).encode()
    padded += b" " * (MAX_BODY_BYTES - len(padded))
    assert len(padded) == MAX_BODY_BYTES
    assert node.status(padded).status == 200


def test_wrong_passwords_are_403_then_429_per_client(node: Node) -> None:
    codes = [node.status(_password("guess")).status for _ in range(6)]
    assert codes == [403] * 5 + [429]
    refused = node.status(_password(PASSWORD))
    assert refused.status == 429  # even the right password waits: the bucket is empty
    assert refused.json() == {"error": "too many wrong passwords, retry later"}
    assert int(refused.headers["Retry-After"]) >= 1
    other = node.status(_password(PASSWORD), remote="10.0.0.2")
    assert other.status == 200  # another address has its own bucket


def test_bad_requests_do_not_use_up_the_bucket(node: Node) -> None:
    for _ in range(20):
        assert node.status(b"{").status == 400
        assert node.status(_password(PASSWORD)).status == 200
    assert node.status(_password("guess")).status == 403


# ---- routing, landing page, health --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/nope", 404, None),
        ("GET", "/metrics/", 404, None),
        ("POST", "/metrics", 405, "GET"),
        ("GET", "/get-status", 405, "POST"),
        ("DELETE", "/-/healthy", 405, "GET"),
        ("HEAD", "/get-status", 405, "POST"),
    ],
)
def test_unknown_paths_and_wrong_methods(
    node: Node, method: str, path: str, status: int, allow: str | None
) -> None:
    response = node(method, path)
    assert response.status == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers.get("Allow") == allow
    if method != "HEAD":
        expected = "not found; see / for the endpoints" if status == 404 else f"use {allow}"
        assert response.json() == {"error": expected}


def test_health_and_readiness(node: Node) -> None:
    healthy = node("GET", "/-/healthy")
    assert (healthy.status, healthy.body) == (200, b"OK\n")
    assert healthy.headers["Content-Type"] == "text/plain; charset=utf-8"
    node.ready = False
    waiting = node("GET", "/-/ready")
    assert (waiting.status, waiting.reason) == (503, "Service Unavailable")
    assert waiting.body == b"waiting for the first sample\n"
    assert node("GET", "/-/healthy").status == 200  # alive while not ready
    node.ready = True
    assert (node("GET", "/-/ready").status, node("GET", "/-/ready").body) == (200, b"OK\n")


def test_landing_page_escapes_the_hostname(node: Node) -> None:
    node.snapshot = snapshot(hostname="<script>x</script>")
    page = node("GET", "/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"&lt;script&gt;x&lt;/script&gt;" in page.body
    assert b"<script>" not in page.body


def test_an_internal_error_is_500_without_details(tmp_path: Path) -> None:
    def broken() -> Snapshot:
        raise RuntimeError("secret detail")

    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    app = ExporterApp(
        latest=broken, ready=lambda: True, passwords=PasswordSource(password_file=password_file)
    )
    response = call(app, "GET", "/metrics")
    assert response.status == 500
    assert response.json() == {"error": "internal error"}
    assert b"secret" not in response.body
