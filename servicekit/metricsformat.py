"""The ``/metrics`` answer of both services: the format the client asks for, gzip if it accepts it.

The exposition format comes from the Accept header: OpenMetrics 1.0.0 when the client accepts it
(without a version, or as 1.0.0 or its draft 0.0.1) at least as much as plain text, else the
Prometheus text format 0.0.4, which every scraper reads; a header that cannot be read gets the
text format too. Only these two content types are ever sent, so a client cannot make the
services echo (and cache) arbitrary parameters. Compression comes from Accept-Encoding
(:mod:`servicekit.encoding`); both vary by request, so the answer always carries
``Vary: Accept-Encoding``.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

from servicekit.encoding import VARY, accepts_gzip

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_OPENMETRICS_VERSIONS = ("", "1.0.0", "0.0.1")


def _media_range(element: str) -> tuple[str, dict[str, str]]:
    media, *parameters = element.split(";")
    values = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        values[name.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), values


def _quality(parameters: dict[str, str]) -> float:
    try:
        quality = float(parameters.get("q", "1"))
    except ValueError:
        return 0.0
    return quality if 0.0 <= quality <= 1.0 else 0.0


def wants_openmetrics(accept: str | None) -> bool:
    """Whether a client with this Accept header gets OpenMetrics rather than the text format."""
    best_openmetrics = best_text = 0.0
    for element in (accept or "").split(","):
        media, parameters = _media_range(element)
        quality = _quality(parameters)
        if media == "application/openmetrics-text":
            if parameters.get("version", "") in _OPENMETRICS_VERSIONS:
                best_openmetrics = max(best_openmetrics, quality)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, quality)
    return best_openmetrics > 0.0 and best_openmetrics >= best_text


@dataclass(frozen=True)
class MetricsFormat:
    """How one request wants its metrics: OpenMetrics or text, and compression."""

    openmetrics: bool
    gzip: bool

    @property
    def content_type(self) -> str:
        return OPENMETRICS if self.openmetrics else TEXT

    def compress(self, body: bytes) -> bytes:
        """``body`` in the coding this request accepts."""
        return gzip.compress(body, compresslevel=3) if self.gzip else body

    def headers(self) -> list[tuple[str, str]]:
        """Headers besides Content-Type and Content-Length."""
        return [VARY, ("Content-Encoding", "gzip")] if self.gzip else [VARY]


def negotiate(accept: str | None, accept_encoding: str | None) -> MetricsFormat:
    """The format of a ``/metrics`` answer to a request with these two headers."""
    return MetricsFormat(wants_openmetrics(accept), accepts_gzip(accept_encoding))
