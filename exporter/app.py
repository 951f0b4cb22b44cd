"""The exporter's HTTP endpoints: ``/metrics``, legacy ``POST /get-status``, landing page, health.

Every endpoint renders the sampler's latest snapshot and never touches NVML, so a hung GPU cannot
hang a request. The Prometheus exposition of a snapshot is rendered once per snapshot and format
and shared by all scrapes until the next snapshot.
"""

from __future__ import annotations

import gzip
import html
import json
import threading
from typing import Any, Callable

from flask import Flask, Response, request
from prometheus_client.exposition import choose_encoder
from werkzeug.exceptions import HTTPException

from exporter import __version__
from exporter.collector import SnapshotCollector
from exporter.legacy import legacy_status_json
from exporter.password import FailureThrottle, PasswordSource
from exporter.snapshot import Snapshot

MAX_BODY_BYTES = 4096  # a legacy request is {"passwd": "..."}; anything larger is not one

_LANDING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GPU exporter</title></head>
<body style="font-family: sans-serif; margin: 2em">
<h1>GPU exporter {version}</h1>
<p>Node <b>{hostname}</b>.</p>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
<li><code>POST /get-status</code> with <code>{{"passwd": "..."}}</code>: legacy node JSON</li>
<li><a href="-/healthy">/-/healthy</a>, <a href="-/ready">/-/ready</a>: health checks</li>
</ul></body></html>
"""


def _json_error(status: int, message: str, **headers: str) -> Response:
    body = json.dumps({"error": message})
    return Response(body, status=status, mimetype="application/json", headers=headers)


class MetricsRenderer:
    """Encodes a snapshot once per (snapshot, format, compression) and reuses the bytes."""

    def __init__(self, latest: Callable[[], Snapshot], *, include_processes: bool) -> None:
        self._latest = latest
        self._include_processes = include_processes
        self._lock = threading.Lock()
        self._sequence = -1
        self._cache: dict[tuple[str, bool], bytes] = {}

    def render(self, accept: str | None, accept_encoding: str | None) -> tuple[bytes, str, bool]:
        """Body, content type and whether the body is gzip-compressed."""
        encoder, content_type = choose_encoder(accept)
        compress = "gzip" in (accept_encoding or "")
        snapshot = self._latest()
        key = (content_type, compress)
        with self._lock:
            if snapshot.sequence != self._sequence:
                self._cache.clear()
                self._sequence = snapshot.sequence
            cached = self._cache.get(key)
        if cached is None:
            view = SnapshotCollector(lambda: snapshot, include_processes=self._include_processes)
            cached = encoder(view)
            if compress:
                cached = gzip.compress(cached, compresslevel=3)
            with self._lock:
                if snapshot.sequence == self._sequence:
                    self._cache[key] = cached
        return cached, content_type, compress


def _password(body: bytes) -> str:
    """The ``passwd`` of a legacy request body; ValueError says what is wrong."""
    if not body:
        raise ValueError('missing JSON body {"passwd": "..."}')
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError("body must be a JSON object")
    password = document.get("passwd")
    if not isinstance(password, str):
        raise ValueError('body must have a string field "passwd"')
    return password


def create_app(
    *,
    latest: Callable[[], Snapshot],
    ready: Callable[[], bool],
    passwords: PasswordSource,
    include_processes: bool = True,
    throttle: FailureThrottle | None = None,
) -> Flask:
    """Build the Flask app over a snapshot source."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    renderer = MetricsRenderer(latest, include_processes=include_processes)
    throttle = throttle or FailureThrottle()

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type, compressed = renderer.render(
            request.headers.get("Accept"), request.headers.get("Accept-Encoding")
        )
        response = Response(body, content_type=content_type)
        if compressed:
            response.headers["Content-Encoding"] = "gzip"
        return response

    @app.post("/get-status")
    def get_status() -> Response:
        address = request.remote_addr or "unknown"
        wait = throttle.retry_after(address)
        if wait > 0:
            return _json_error(
                429, "too many wrong passwords, retry later", **{"Retry-After": str(int(wait) + 1)}
            )
        try:
            password = _password(request.get_data(cache=False))
        except ValueError as error:
            return _json_error(400, str(error))
        if not passwords.matches(password):
            throttle.record_failure(address)
            return _json_error(403, "wrong password")
        return Response(legacy_status_json(latest()), mimetype="application/json")

    @app.get("/")
    def landing() -> Response:
        page = _LANDING.format(version=__version__, hostname=html.escape(latest().host.hostname))
        return Response(page, mimetype="text/html")

    @app.get("/-/healthy")
    def healthy() -> Response:
        return Response("OK\n", mimetype="text/plain")

    @app.get("/-/ready")
    def is_ready() -> Response:
        if ready():
            return Response("OK\n", mimetype="text/plain")
        return Response("waiting for the first sample\n", status=503, mimetype="text/plain")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 413:
            return _json_error(413, f"request body over {MAX_BODY_BYTES} bytes")
        return _json_error(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        app.logger.exception("unhandled error")  # the details stay in the log, not the response
        return _json_error(500, "internal error")

    return app
