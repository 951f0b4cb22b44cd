"""Accept-Encoding headers and whether an answer to them should be gzip-compressed.

One table for the negotiation's unit test and for both services' endpoints, so the exporter and
the status service are held to the same answers. ``None`` sends no Accept-Encoding at all.
"""

from __future__ import annotations

import gzip

import requests

GZIP_NEGOTIATION: list[tuple[str | None, bool]] = [
    ("gzip", True),
    ("gzip, deflate", True),
    ("GZip;Q=0.7", True),
    ("*", True),
    ("gzip;q=0.5", True),
    ("gzip, *;q=0", True),
    ("x-gzip", True),
    ("gzip;q=0", False),
    ("gzip;q=0.000", False),
    ("*;q=0", False),
    ("identity", False),
    ("gzip;q=0.5, identity", False),
    ("deflate, br", False),
    ("gzip;q=2", False),
    ("gzip;q=nan", False),
    ("", False),
    (None, False),
]


def check_negotiated(response: requests.Response, *, gzipped: bool, what: str) -> bytes:
    """Assert the coding and ``Vary`` of a response fetched with ``stream=True``; its plain body.

    The body is read raw, so a compressed answer is told apart from a plain one by its bytes and
    not only by its header.
    """
    assert response.status_code == 200, what
    assert response.headers.get("Vary") == "Accept-Encoding", what
    raw = response.raw.read()
    if gzipped:
        assert response.headers.get("Content-Encoding") == "gzip", what
        return gzip.decompress(raw)
    assert "Content-Encoding" not in response.headers, what
    assert raw[:2] != b"\x1f\x8b", what
    return raw


def encoding_header(header: str | None) -> dict[str, str | None]:
    """Request headers sending exactly ``header`` (requests drops a header set to None)."""
    return {"Accept-Encoding": header}
