"""Content-coding negotiation: whether a response may be sent gzip-compressed.

Both services compress only their larger answers (metrics, cluster JSON) and decide it here, so a
client gets the same answer from either. The Accept-Encoding header is read as RFC 9110 defines
it: ``gzip;q=0`` and ``*;q=0`` refuse gzip, ``*`` alone accepts it, ``identity`` alone asks for
no coding, and gzip is chosen only when the client does not prefer identity over it. Every answer
whose coding depends on the header must carry :data:`VARY`, so caches keep the two apart.
"""

from __future__ import annotations

VARY = ("Vary", "Accept-Encoding")


def _quality(parameters: list[str]) -> float | None:
    """The ``q`` of one element (1 without one); None when it is malformed."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "q":
            continue
        try:
            quality = float(value.strip())
        except ValueError:
            return None
        # Only 0 to 1 is valid; "nan" and "inf" parse as floats but are not qualities.
        return quality if 0.0 <= quality <= 1.0 else None
    return 1.0


def coding_qualities(header: str) -> dict[str, float]:
    """Each coding named in an Accept-Encoding header with its highest quality.

    Malformed elements are dropped rather than guessed at: a coding is only used when the client
    clearly accepts it.
    """
    qualities: dict[str, float] = {}
    for element in header.split(","):
        coding, *parameters = element.split(";")
        coding = coding.strip().lower()
        quality = _quality(parameters)
        if not coding or quality is None:
            continue
        qualities[coding] = max(quality, qualities.get(coding, 0.0))
    return qualities


def accepts_gzip(header: str | None) -> bool:
    """Whether to gzip an answer to a request with this Accept-Encoding header.

    Without the header nothing is compressed: a client that says nothing may not expect it.
    """
    if header is None:
        return False
    qualities = coding_qualities(header)
    wildcard = qualities.get("*")
    gzip = qualities.get("gzip", qualities.get("x-gzip", wildcard or 0.0))
    # identity is always acceptable (RFC 9110, 12.5.3), but only an explicit quality, by name or
    # through "*", can make a client prefer it to gzip: "gzip;q=0.5" alone still asks for gzip.
    identity = qualities.get("identity", wildcard or 0.0)
    return gzip > 0.0 and gzip >= identity
