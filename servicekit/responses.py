"""Answers both services build the same way: JSON error bodies, the health-check paths, the WSGI
application type the middlewares wrap.

Every error either service sends, from an endpoint, a middleware or the server's own request
limits, is ``{"error": "..."}`` built here, so clients parse one shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Callable

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

JSON = "application/json"
# Paths that health checkers (systemd, Kubernetes probes) reach without credentials and that an
# overload never refuses: a failing liveness probe would restart a process that is merely busy.
HEALTH_PATHS = frozenset({"/-/healthy", "/-/ready"})


def json_error_body(message: str) -> bytes:
    """The body of every error answer: ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


def send_json_error(
    start_response: Callable,
    status: str,
    message: str,
    headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    """Answer a WSGI request with ``status`` (a full status line) and a JSON error body."""
    body = json_error_body(message)
    start_response(status, [("Content-Type", JSON), ("Content-Length", str(len(body))), *headers])
    return [body]
