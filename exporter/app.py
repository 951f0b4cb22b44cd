"""The exporter's HTTP endpoints: ``/metrics``, legacy ``POST /get-status``, landing page, health.

Every endpoint renders the sampler's latest snapshot and never touches NVML, so a hung GPU cannot
hang a request. The Prometheus exposition of a snapshot is rendered once per snapshot and format
and shared by all scrapes until the next snapshot; a family whose samples are those of the last
rendering is not written again (servicekit.exposition.FamilyCache).

The app is plain WSGI rather than Flask: it has five routes, and it runs on every GPU node, where
Flask's import alone would cost a third of the exporter's memory.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from collections.abc import Iterable
from typing import Any, Callable

from exporter import __version__
from exporter.collector import render
from exporter.legacy import legacy_status_json
from exporter.snapshot import Snapshot
from servicekit.exposition import FamilyCache
from servicekit.limiter import FailureThrottle, client_key
from servicekit.metricsformat import MetricsFormat, negotiate
from servicekit.password import PasswordSource
from servicekit.responses import JSON, json_error_body

log = logging.getLogger(__name__)

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

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Reply:
    """A response: status, body, content type and extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


def _json_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, json_error_body(message), JSON, headers)


def _text(status: int, text: str) -> Reply:
    return Reply(status, text.encode(), "text/plain; charset=utf-8")


class MetricsRenderer:
    """Encodes a snapshot once per (snapshot, format, compression) and reuses the bytes.

    There are four such bodies at most per snapshot: text or OpenMetrics, plain or gzip.
    ``include_commands`` puts processes' command lines on ``gpu_process_info``; callers decide
    it explicitly, because a command line can hold secrets. ``dcgm_names`` adds dcgm-exporter's
    families (``--metrics.dcgm-names``).
    """

    def __init__(
        self,
        latest: Callable[[], Snapshot],
        *,
        include_processes: bool,
        include_commands: bool,
        dcgm_names: bool = False,
    ) -> None:
        self._latest = latest
        self._include_processes = include_processes
        self._include_commands = include_commands
        self._dcgm_names = dcgm_names
        self._lock = threading.Lock()
        self._sequence = -1
        self._cache: dict[MetricsFormat, bytes] = {}
        # Across snapshots: the families that did not change are not written again.
        self._families = FamilyCache()

    def render(
        self, accept: str | None, accept_encoding: str | None
    ) -> tuple[bytes, MetricsFormat]:
        """The body for a request with these headers, and the format it is in."""
        metrics_format = negotiate(accept, accept_encoding)
        snapshot = self._latest()
        with self._lock:
            if snapshot.sequence != self._sequence:
                self._cache.clear()
                self._sequence = snapshot.sequence
            cached = self._cache.get(metrics_format)
        if cached is None:
            body = render(
                snapshot,
                openmetrics=metrics_format.openmetrics,
                include_processes=self._include_processes,
                include_commands=self._include_commands,
                dcgm_names=self._dcgm_names,
                cache=self._families,
            )
            cached = metrics_format.compress(body)
            with self._lock:
                if snapshot.sequence == self._sequence:
                    self._cache[metrics_format] = cached
        return cached, metrics_format


def _password(body: bytes) -> str:
    """The ``passwd`` of a legacy request body; ValueError says what is wrong."""
    if not body:
        raise ValueError('missing JSON body {"passwd": "..."}')
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"body is not valid JSON: {error}") from None
    except RecursionError:  # "[[[[...": a few kB of brackets exhaust the parser's stack
        raise ValueError("body is nested too deeply to be JSON of the legacy request") from None
    if not isinstance(document, dict):
        raise ValueError("body must be a JSON object")
    password = document.get("passwd")
    if not isinstance(password, str):
        raise ValueError('body must have a string field "passwd"')
    return password


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body; OverflowError when it is over MAX_BODY_BYTES (it is then not read)."""
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH")
    if declared:
        # Digits only: int() also takes "-1" (read to the end of the stream), "+5", " 5", "1_0".
        if not (declared.isascii() and declared.isdigit()):
            raise ValueError(f"invalid Content-Length {declared[:40]!r}: not digits")
        if len(declared) > len(str(MAX_BODY_BYTES)) or int(declared) > MAX_BODY_BYTES:
            raise OverflowError
        return stream.read(int(declared))
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        body = stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise OverflowError
        return body
    return b""


class ExporterApp:
    """The WSGI application: routes requests to small handlers returning :class:`Reply`."""

    def __init__(
        self,
        *,
        latest: Callable[[], Snapshot],
        ready: Callable[[], bool],
        passwords: PasswordSource,
        include_processes: bool = True,
        include_commands: bool = False,
        dcgm_names: bool = False,
        throttle: FailureThrottle | None = None,
    ) -> None:
        self._latest = latest
        self._ready = ready
        self._passwords = passwords
        self._throttle = throttle or FailureThrottle()
        self._renderer = MetricsRenderer(
            latest,
            include_processes=include_processes,
            include_commands=include_commands,
            dcgm_names=dcgm_names,
        )
        self._routes: dict[str, tuple[str, Callable[[dict[str, Any]], Reply]]] = {
            "/metrics": ("GET", self.metrics),
            "/get-status": ("POST", self.get_status),
            "/": ("GET", self.landing),
            "/-/healthy": ("GET", self.healthy),
            "/-/ready": ("GET", self.is_ready),
        }

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        try:
            reply = self._dispatch(environ)
        except Exception:
            log.exception("unhandled error")  # the details stay in the log, not the response
            reply = _json_error(500, "internal error")
        headers = [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            *reply.headers,
        ]
        start_response(f"{reply.status} {_REASONS.get(reply.status, '')}", headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            return [b""]
        return [reply.body]

    def _dispatch(self, environ: dict[str, Any]) -> Reply:
        route = self._routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return _json_error(404, "not found; see / for the endpoints")
        method, handler = route
        requested = environ.get("REQUEST_METHOD", "GET")
        if requested != method and not (method == "GET" and requested == "HEAD"):
            return _json_error(405, f"use {method}", [("Allow", method)])
        return handler(environ)

    def metrics(self, environ: dict[str, Any]) -> Reply:
        body, metrics_format = self._renderer.render(
            environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING")
        )
        return Reply(200, body, metrics_format.content_type, metrics_format.headers())

    def get_status(self, environ: dict[str, Any]) -> Reply:
        key = client_key(environ)
        # The token is taken before the body is read, so requests racing in together cannot all
        # pass the check first; only a wrong password keeps it.
        wait = self._throttle.take(key)
        if wait > 0:
            retry = [("Retry-After", str(int(wait) + 1))]
            return _json_error(429, "too many wrong passwords, retry later", retry)
        wrong = False
        try:
            password = _password(_read_body(environ))
            wrong = not self._passwords.matches(password)
        except OverflowError:
            return _json_error(413, f"request body over {MAX_BODY_BYTES} bytes")
        except ValueError as error:
            return _json_error(400, str(error))
        finally:
            if not wrong:
                self._throttle.give_back(key)
        if wrong:
            return _json_error(403, "wrong password")
        return Reply(200, legacy_status_json(self._latest()), JSON)

    def landing(self, environ: dict[str, Any]) -> Reply:
        hostname = html.escape(self._latest().host.hostname)
        page = _LANDING.format(version=__version__, hostname=hostname)
        return Reply(200, page.encode(), "text/html; charset=utf-8")

    def healthy(self, environ: dict[str, Any]) -> Reply:
        return _text(200, "OK\n")

    def is_ready(self, environ: dict[str, Any]) -> Reply:
        if self._ready():
            return _text(200, "OK\n")
        return _text(503, "waiting for the first sample\n")
