"""The one client of a Prometheus-compatible query API (Prometheus, VictoriaMetrics, Thanos, Mimir).

Both the service's ``--prometheus-url`` mode (status_api/promsource.py, a round of instant queries
every ``--interval``) and ``gpu-status-api report`` (status_api/report.py, three queries once) ask
the engine through this module: the ``--prometheus-*`` flags and their checks, the TLS context,
and the instant query with its limits.

The HTTP stack is aiohttp, the service's own: the service runs its rounds on an asyncio loop, and
the report, a synchronous command, runs the same client under :func:`asyncio.run`
(:func:`run_queries`). Every query is a form POST to ``/api/v1/query`` (long selectors stay out of
URLs and access logs) with a total timeout that covers the whole answer, a byte cap on the body,
and no redirect followed: a redirect would carry the basic-auth header wherever it points. The
basic-auth password file and the CA file are re-read when they change, so a rotation needs no
restart. Every failure is an :class:`EngineError` whose text is safe to print or show on a page.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp
import orjson

from servicekit.cliargs import positive
from servicekit.filewatch import WatchedFile
from servicekit.password import warn_if_exposed
from status_api import __version__
from status_api.answers import AnswerTooLarge, read_capped
from status_api.credentials import basic_auth

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# An engine's words (error text, Location header) may be shown on a public page: this much.
_MAX_SHOWN = 300

Sample = tuple[dict[str, str], float]


class EngineError(Exception):
    """The engine could not be asked, or answered an error or a bad body; the text is shown as
    is."""


@dataclass(frozen=True)
class EngineSettings:
    """How to reach the engine: base URL (with any path prefix, no trailing slash) and limits.
    ``basic_auth`` is called once per query batch, so a rotated password file is seen."""

    url: str
    timeout: float = 5.0
    max_body: int = 64 * MIB
    ca_file: Path | None = None
    basic_auth: Callable[[], tuple[str, str]] | None = None


def add_engine_flags(
    parser: argparse._ActionsContainer,  # a parser or one of its argument groups
    *,
    url_help: str,
    url_required: bool = False,
    timeout: float,
    timeout_help: str,
    max_body: int,
) -> None:
    """The shared ``--prometheus-*`` flags; each command has its own defaults for the limits."""
    parser.add_argument("--prometheus-url", required=url_required, help=url_help)
    parser.add_argument(
        "--prometheus-timeout", type=positive(float), default=timeout,
        help=f"{timeout_help} (default {timeout:g})",
    )  # fmt: skip
    parser.add_argument(
        "--prometheus-max-body-bytes", type=positive(int), default=max_body,
        help=f"largest answer read from the engine (default {max_body // MIB} MiB)",
    )  # fmt: skip
    parser.add_argument("--prometheus-ca-file", type=Path, help="CA certificate(s) for https")
    parser.add_argument("--prometheus-basic-auth-user", help="basic-auth user for the engine")
    parser.add_argument(
        "--prometheus-basic-auth-password-file", type=Path,
        help="file whose first line is the engine's basic-auth password (re-read on change)",
    )  # fmt: skip


def check_url(url: str) -> str:
    """The base URL without a trailing slash; ValueError naming what is wrong with it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"--prometheus-url {url!r} must be http:// or https:// with a host "
            "(expected http(s)://host[:port][/prefix])"
        )
    if parts.username is not None or parts.password is not None:
        # ps shows command lines to every user, and the page shows the URL; credentials belong
        # in a file.
        raise ValueError(
            "--prometheus-url must not hold credentials: use --prometheus-basic-auth-user and "
            "--prometheus-basic-auth-password-file"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"--prometheus-url {url!r} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 -- raises for a port out of range
    except ValueError:
        raise ValueError(f"--prometheus-url {url!r} has a bad port") from None
    return url.rstrip("/")


def tls_context(url: str, ca_file: Path | None) -> ssl.SSLContext | None:
    """The client TLS context of an https engine: the system CAs, or those of ``ca_file``."""
    if urllib.parse.urlsplit(url).scheme != "https":
        return None
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    """The ``--prometheus-*`` options, every one checked; ValueError names the flag at fault."""
    url = check_url(args.prometheus_url)
    ca_file = args.prometheus_ca_file
    if ca_file is not None:
        if not url.startswith("https://"):
            raise ValueError("--prometheus-ca-file needs an https:// --prometheus-url")
        if not ca_file.is_file():
            raise ValueError(f"--prometheus-ca-file: no such file: {ca_file}")
    user, password_file = args.prometheus_basic_auth_user, args.prometheus_basic_auth_password_file
    if (user is None) != (password_file is None):
        raise ValueError(
            "--prometheus-basic-auth-user and --prometheus-basic-auth-password-file go together"
        )
    auth = None
    if user is not None:
        try:
            auth = basic_auth(user, password_file, flag="--prometheus-basic-auth-user")
        except ValueError as error:
            if str(error).startswith("--prometheus-basic-auth-user"):
                raise
            raise ValueError(f"--prometheus-basic-auth-password-file: {error}") from None
        warn_if_exposed(password_file, what="--prometheus-basic-auth-password-file")
    try:
        tls_context(url, ca_file)  # a bad CA file fails now, not at every query
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"cannot load --prometheus-ca-file {ca_file}: {error}") from None
    return EngineSettings(
        url=url,
        timeout=args.prometheus_timeout,
        max_body=int(args.prometheus_max_body_bytes),
        ca_file=ca_file,
        basic_auth=auth,
    )


def shown(text: str) -> str:
    """``text`` safe to show: printable ASCII only, cut to a sane length."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text[: _MAX_SHOWN + 1])
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _vector(status: int, body: bytes, expr: str) -> list[Sample]:
    """The samples of an instant-vector answer; EngineError for anything else. One malformed
    sample is dropped, not the answer."""
    try:
        # orjson, not the json module: an answer at 2,000 nodes is a few MB of small objects,
        # and decoding them was the largest part of a round in Python.
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EngineError(f"HTTP {status}, the answer to {shown(expr)} is not JSON") from None
    if not isinstance(document, dict):
        raise EngineError(f"HTTP {status}, the answer to {shown(expr)} is not a JSON object")
    if document.get("status") != "success":
        kind = document.get("errorType", "error")
        raise EngineError(shown(f"query failed: {document.get('error', 'no error text')} ({kind})"))
    data = document.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise EngineError(f"the answer to {shown(expr)} is not an instant vector")
    samples: list[Sample] = []
    append = samples.append
    for item in data.get("result") or []:
        try:
            labels, (_, raw) = item["metric"], item["value"]
            value = float(raw)
            # Joining fails (TypeError) unless every label value is a string, in one C call.
            "".join(labels.values())
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if type(labels) is dict:
            append((labels, value))
    return samples


def _refuse_redirect(response: aiohttp.ClientResponse) -> None:
    if 300 <= response.status < 400:
        location = shown(response.headers.get("Location", ""))
        raise EngineError(
            f"HTTP {response.status} redirect to {location!r}, not followed (redirects are "
            "refused): give the final address as --prometheus-url"
        )


class EngineClient:
    """Instant queries over one aiohttp session; create it inside a running loop, and
    :meth:`close` it (or use ``async with``)."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._endpoint = settings.url + "/api/v1/query"
        self._tls = WatchedFile(
            settings.ca_file,
            lambda: tls_context(settings.url, settings.ca_file),
            what="--prometheus-ca-file",
            errors=(OSError, ssl.SSLError),
            keeping=lambda context: "the previous CA certificates",
            logger=log,
        )
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
            headers={"User-Agent": f"gpu-status-api/{__version__}", "Accept": "application/json"},
        )

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    def _auth(self) -> aiohttp.BasicAuth | None:
        if self.settings.basic_auth is None:
            return None
        return aiohttp.BasicAuth(*self.settings.basic_auth())

    async def query(
        self, expr: str, *, at: float, auth: aiohttp.BasicAuth | None = None
    ) -> list[Sample]:
        """The samples of ``expr`` evaluated at ``at``; EngineError for every failure."""
        form = {"query": expr, "time": f"{at:.3f}"}
        tls = self._tls.current()
        try:
            async with self._session.post(
                self._endpoint,
                data=form,
                auth=auth,
                allow_redirects=False,
                ssl=tls if tls is not None else True,
            ) as response:
                _refuse_redirect(response)
                body = await read_capped(response, self.settings.max_body)
                status = response.status
        except AnswerTooLarge as error:
            raise EngineError(str(error)) from None
        except asyncio.TimeoutError:
            raise EngineError(f"no answer within the {self.settings.timeout:g} s timeout") from None
        except aiohttp.ClientConnectorError as error:
            # asyncio puts "Connect call failed (...)" in strerror; the errno says it plainly.
            errno = error.os_error.errno
            plain = errno is not None and not isinstance(error.os_error, ssl.SSLError)
            reason = os.strerror(errno) if plain and errno else ""
            raise EngineError(
                shown(f"cannot connect: {reason or error.os_error.strerror or error.os_error}")
            ) from None
        except aiohttp.ClientError as error:
            text = f"HTTP client error: {type(error).__name__}: {error}"
            raise EngineError(shown(text)) from None
        if status != 200 and not body.lstrip().startswith(b"{"):
            raise EngineError(f"HTTP {status} from /api/v1/query")
        return _vector(status, body, expr)

    async def queries(self, exprs: Sequence[str], *, at: float) -> list[list[Sample]]:
        """Every query at the same evaluation time, at once; the first failure fails them all."""
        auth = self._auth()
        return list(await asyncio.gather(*(self.query(expr, at=at, auth=auth) for expr in exprs)))

    async def queries_at(self, asked: Sequence[tuple[str, float]]) -> list[list[Sample]]:
        """Every query at its own evaluation time, at once; the first failure fails them all."""
        auth = self._auth()
        return list(await asyncio.gather(*(self.query(e, at=at, auth=auth) for e, at in asked)))


def run_queries(settings: EngineSettings, exprs: Sequence[str], *, at: float) -> list[list[Sample]]:
    """:meth:`EngineClient.queries` for a synchronous caller (no event loop running)."""

    async def ask() -> list[list[Sample]]:
        async with EngineClient(settings) as client:
            return await client.queries(exprs, at=at)

    return asyncio.run(ask())
