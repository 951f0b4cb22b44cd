"""The ``/metrics`` answer of both services: the format the client asks for, gzip if it accepts it.

The exposition format comes from the Accept header (Prometheus text or OpenMetrics), compression
from Accept-Encoding (:mod:`servicekit.encoding`); both vary by request, so the answer always
carries ``Vary: Accept-Encoding``.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any, Callable

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest

from servicekit.encoding import VARY, accepts_gzip


def choose_metrics_encoder(accept: str | None) -> tuple[Callable[..., bytes], str]:
    """The encoder the Accept header asks for; the classic text format when it cannot be read."""
    try:
        return choose_encoder(accept)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # e.g. "version=1.x": the library compares str with int
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4


@dataclass(frozen=True)
class MetricsFormat:
    """How one request wants its metrics: encoder, content type and compression."""

    encoder: Callable[..., bytes]
    content_type: str
    gzip: bool

    @property
    def key(self) -> tuple[str, bool]:
        """Requests with equal keys get the same bytes (for caching renderings)."""
        return self.content_type, self.gzip

    def encode(self, collector: Any) -> bytes:
        """The body for ``collector`` (a registry or anything with ``collect``)."""
        body = self.encoder(collector)
        return gzip.compress(body, compresslevel=3) if self.gzip else body

    def headers(self) -> list[tuple[str, str]]:
        """Headers besides Content-Type and Content-Length."""
        return [VARY, ("Content-Encoding", "gzip")] if self.gzip else [VARY]


def negotiate(accept: str | None, accept_encoding: str | None) -> MetricsFormat:
    """The format of a ``/metrics`` answer to a request with these two headers."""
    encoder, content_type = choose_metrics_encoder(accept)
    return MetricsFormat(encoder, content_type, accepts_gzip(accept_encoding))
