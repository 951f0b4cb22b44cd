"""Serving a WSGI app in production: cheroot, TLS and basic auth, and an in-flight limit.

cheroot (CherryPy's server) is used rather than waitress because it terminates TLS itself, which
the exporter-toolkit web configuration needs (server certificates, client certificates, minimum
TLS version), and it serves from a fixed thread pool. Flask's development server is never used.
The web configuration is re-read when it changes: basic-auth users and headers apply from the next
request, certificates from the next connection.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Callable

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from servicekit.webconfig import (
    BasicAuth,
    LoadedWebConfig,
    WebConfig,
    WebConfigError,
    WebConfigFile,
    WSGIApp,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUESTS = 40


class InFlightLimit:
    """Answer 503 at once when ``limit`` requests are already being served, instead of queueing."""

    def __init__(self, app: WSGIApp, limit: int) -> None:
        self._app = app
        self._slots = threading.BoundedSemaphore(limit)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not self._slots.acquire(blocking=False):
            body = b'{"error": "too many requests in flight, retry shortly"}'
            start_response(
                "503 Service Unavailable",
                [
                    ("Content-Type", "application/json"),
                    ("Retry-After", "1"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        try:
            result = self._app(environ, start_response)
            try:
                return [b"".join(result)]  # finish inside the slot: bodies here are small
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            self._slots.release()


class ExtraHeaders:
    """Add the operator's ``http_server_config.headers`` to every response."""

    def __init__(self, app: WSGIApp, headers: dict[str, str]) -> None:
        self._app = app
        self._headers = list(headers.items())

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        def with_headers(status: str, headers: list, exc_info: object = None) -> Callable:
            return start_response(status, headers + self._headers, exc_info)

        return self._app(environ, with_headers)


def _protect(app: WSGIApp, config: WebConfig) -> WSGIApp:
    """Basic auth and headers around ``app``."""
    wrapped: WSGIApp = app
    if config.headers:
        wrapped = ExtraHeaders(wrapped, config.headers)
    if config.users:
        wrapped = BasicAuth(wrapped, config.users)
    return wrapped


class ReloadingProtection:
    """Basic auth and headers from the web config file as it is now, rebuilt when it changes."""

    def __init__(self, app: WSGIApp, source: WebConfigFile) -> None:
        self._app = app
        self._source = source
        loaded = source.current()
        self._built: tuple[LoadedWebConfig, WSGIApp] = (loaded, _protect(app, loaded.config))

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        loaded = self._source.current()
        built_for, protected = self._built
        if loaded is not built_for:
            protected = _protect(self._app, loaded.config)
            self._built = (loaded, protected)  # one assignment: readers see a consistent pair
        return protected(environ, start_response)


class ReloadingSSLAdapter(BuiltinSSLAdapter):
    """cheroot's adapter wraps each new connection with ``self.context``: keep it current."""

    def __init__(self, source: WebConfigFile) -> None:
        tls = source.current().config.tls
        assert tls is not None
        super().__init__(str(tls.cert_file), str(tls.key_file))
        self._source = source
        self.context = source.current().context

    def wrap(self, sock: object) -> tuple:
        context = self._source.current().context
        if context is not self.context:
            self.context = context  # the setter also installs cheroot's SNI callback
        return super().wrap(sock)


def wrap_app(app: WSGIApp, config: WebConfig | WebConfigFile, *, max_requests: int) -> WSGIApp:
    """Apply the limit, basic auth and headers around ``app``; the limit runs first."""
    if isinstance(config, WebConfigFile):
        return InFlightLimit(ReloadingProtection(app, config), max_requests)
    return InFlightLimit(_protect(app, config), max_requests)


def _host(listen_address: str) -> str:
    return listen_address.strip("[]") or "0.0.0.0"


def make_server(
    app: WSGIApp,
    *,
    listen_address: str,
    port: int,
    web_config_file: Path | None = None,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    threads: int = 16,
) -> wsgi.Server:
    """Build (not start) the server; raises ``WebConfigError`` on a bad web config."""
    config = WebConfigFile(web_config_file) if web_config_file else WebConfig()
    server = wsgi.Server(
        (_host(listen_address), port),
        wrap_app(app, config, max_requests=max_requests),
        # More threads than the limit, so excess requests reach the limiter and get their 503.
        numthreads=max(threads, max_requests + 4),
        request_queue_size=128,
        timeout=10,
        server_name="gpu-cluster-monitor",
    )
    if isinstance(config, WebConfigFile) and config.current().config.tls is not None:
        server.ssl_adapter = ReloadingSSLAdapter(config)
    return server


def serve(app: WSGIApp, **options: object) -> None:
    """Serve until interrupted (SIGINT/SIGTERM are turned into KeyboardInterrupt by the CLI)."""
    server = make_server(app, **options)  # type: ignore[arg-type]
    server.prepare()
    scheme = "https" if server.ssl_adapter else "http"
    log.info("listening on %s://%s:%s", scheme, *server.bind_addr[:2])
    try:
        server.serve()
    finally:
        server.stop()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_service(
    app: WSGIApp,
    *,
    listen_address: str,
    port: int,
    web_config_file: Path | None,
    max_requests: int,
    on_stop: Callable[[], None],
) -> int:
    """Serve ``app`` until SIGINT or SIGTERM, then call ``on_stop``; returns the exit status.

    Shared by both command lines: a bad web config exits 2 and a port that cannot be bound exits 1,
    each with one log line and no traceback.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        serve(
            app,
            listen_address=listen_address,
            port=port,
            web_config_file=web_config_file,
            max_requests=max_requests,
        )
    except WebConfigError as error:
        log.error("%s", error)
        return 2
    except OSError as error:
        log.error("cannot listen on %s:%d: %s", listen_address, port, error)
        return 1
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        on_stop()
    return 0
