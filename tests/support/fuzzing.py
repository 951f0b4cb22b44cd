"""Helpers shared by the fuzz tests: a response check and Accept headers worth trying."""

from __future__ import annotations

from hypothesis import strategies as st


def no_traceback(ctx: object, response: object, case: object) -> None:
    """A schemathesis check (pass in ``additional_checks``): internals never reach a client.

    Not registered with ``@schemathesis.check``, which would add it to every schemathesis test
    in the process.
    """
    text = response.content.decode("utf-8", errors="replace")  # type: ignore[attr-defined]
    if "Traceback" in text or 'File "' in text:
        raise AssertionError(f"response body leaks internals: {text[:300]!r}")


# OpenAPI ignores a described Accept header, so schemathesis never varies it; these do.
_MEDIA_TYPES = st.sampled_from(
    ["text/plain", "application/openmetrics-text", "*/*", "application/json", "text/html"]
)
_KNOWN_VALUES = ["0.0.4", "1.0.0", "2.0.0", "1.x", "", "underscores", "allow-utf-8", "values"]
_PARAMETER_VALUES = st.one_of(
    st.sampled_from(_KNOWN_VALUES),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=",;"),
        max_size=12,
    ),
)
_PARAMETERS = st.tuples(st.sampled_from(["version", "escaping", "q", "charset"]), _PARAMETER_VALUES)
_ACCEPT_PARTS = st.tuples(_MEDIA_TYPES, st.lists(_PARAMETERS, max_size=3)).map(
    lambda part: ";".join([part[0], *(f"{key}={value}" for key, value in part[1])])
)
ACCEPT_HEADERS = st.lists(_ACCEPT_PARTS, min_size=1, max_size=3).map(",".join)
