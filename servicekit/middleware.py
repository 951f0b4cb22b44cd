"""The WSGI layers around each service's app: the in-flight limit, basic auth and extra headers.

:func:`wrap_app` stacks them in the one order both services use: the limit first (an overload is
refused before any bcrypt check), then basic auth and the operator's headers, rebuilt from the
web configuration file whenever it changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Callable

from servicekit.basicauth import BasicAuth
from servicekit.responses import HEALTH_PATHS, WSGIApp, send_json_error
from servicekit.webconfig import LoadedWebConfig, WebConfig, WebConfigFile


class InFlightLimit:
    """Answer 503 at once when ``limit`` requests are already being served, instead of queueing.

    The health checks are never refused: a liveness probe failing under load would restart a
    process that is merely busy.
    """

    def __init__(self, app: WSGIApp, limit: int) -> None:
        self._app = app
        self._slots = threading.BoundedSemaphore(limit)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in HEALTH_PATHS:
            return self._finish(environ, start_response)
        if not self._slots.acquire(blocking=False):
            return send_json_error(
                start_response,
                "503 Service Unavailable",
                "too many requests in flight, retry shortly",
                [("Retry-After", "1")],
            )
        try:
            return self._finish(environ, start_response)
        finally:
            self._slots.release()

    def _finish(self, environ: dict, start_response: Callable) -> list[bytes]:
        result = self._app(environ, start_response)
        try:
            return [b"".join(result)]  # finish inside the slot: bodies here are small
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


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


def wrap_app(app: WSGIApp, config: WebConfig | WebConfigFile, *, max_requests: int) -> WSGIApp:
    """Apply the limit, basic auth and headers around ``app``; the limit runs first."""
    if isinstance(config, WebConfigFile):
        return InFlightLimit(ReloadingProtection(app, config), max_requests)
    return InFlightLimit(_protect(app, config), max_requests)
