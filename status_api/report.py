"""``gpu-status-api report``: GPU-hours, mean utilization and idle-held hours per group.

Reads the counters of ``prometheus/rules/recording.yml`` from a Prometheus-compatible query
engine (Prometheus, VictoriaMetrics, Thanos, Mimir) with three instant queries at the window's
end, for ``--by user`` (or ``slurm_job``, ``namespace``)::

    sum by (user) (increase(user:gpu_seconds:total[30d]))
    sum by (user) (increase(user:gpu_utilization_seconds:total[30d]))
    sum by (user) (increase(user:gpu_idle_held_seconds:total[30d]))

GPU-hours are the first over 3600, mean utilization the second over the first (weighted by the
time each GPU was held), idle-held hours the third over 3600. ``sum by`` merges the series of one
group from several Prometheus servers in a global view. A grouping whose utilization or idle
counters are not recorded gets no value for them (``null``, an empty cell, ``-``).

Exit status: 0 with a report, 2 for bad arguments, 1 when the engine cannot be reached or
answers with an error.
"""

from __future__ import annotations

import argparse
import base64
import csv
import http.client
import io
import json
import math
import re
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from servicekit.cliargs import positive
from servicekit.logsetup import configure_logging
from servicekit.password import PasswordError, load_password, warn_if_exposed
from status_api import __version__

GROUPINGS = ("user", "slurm_job", "namespace")
FORMATS = ("table", "csv", "json")
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 16 * 1024 * 1024

# Prometheus' duration syntax: units from the largest to the smallest, each at most once.
_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_UNIT_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


class EngineError(Exception):
    """The query engine could not be reached, or answered with an error or a bad body."""


@dataclass(frozen=True)
class EngineSettings:
    """How to reach the engine: base URL (with any path prefix) and the client options."""

    url: str
    timeout: float = DEFAULT_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    ca_file: Path | None = None
    basic_auth: tuple[str, str] | None = None


@dataclass(frozen=True)
class Row:
    """One group of the report; None where the counter behind a value is not recorded."""

    key: str
    gpu_hours: float
    mean_utilization: float | None
    idle_held_hours: float | None


def parse_duration(text: str) -> float:
    """Seconds of a Prometheus duration (``30d``, ``12h``, ``1w``, ``1h30m``); above 0."""
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"--since {text!r} is not a Prometheus duration such as 30d, 12h or 1w")
    seconds = sum(int(n) * unit for n, unit in zip(match.groups(), _UNIT_SECONDS) if n)
    if seconds <= 0:
        raise ValueError(f"--since {text!r} must be longer than 0")
    return seconds


def parse_time(text: str) -> float:
    """Unix seconds of ``--until``: a number of seconds, or RFC 3339 with a time zone."""
    try:
        value = float(text)
    except ValueError:
        return _rfc3339(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--until {text!r} must be a time after 1970")
    return value


def _rfc3339(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--until {text!r} is neither Unix seconds nor RFC 3339 (2024-06-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"--until {text!r} needs a time zone, e.g. Z or +02:00")
    return moment.timestamp()


def check_url(url: str) -> str:
    """The base URL without a trailing slash; ValueError naming what is wrong with it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--prometheus-url {url!r} must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        # ps shows command lines to every user; credentials belong in a file.
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


def _connection(settings: EngineSettings) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(settings.url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, parts.port, timeout=settings.timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=settings.timeout)
    return connection, parts.path.rstrip("/")


def _read_capped(response: http.client.HTTPResponse, *, limit: int, deadline: float) -> bytes:
    """The body, failing past ``limit`` bytes or ``deadline``: a slow drip is no way around the
    timeout, which the socket only applies to each read."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise EngineError("the answer took longer than the timeout")
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise EngineError(f"the answer is larger than {limit} bytes")
        chunks.append(chunk)


def query(settings: EngineSettings, expr: str, *, at: float) -> list[tuple[dict[str, str], float]]:
    """Run an instant query at ``at``: (labels, value) of each sample. Redirects are not
    followed: they would send the credentials wherever the answer points."""
    connection, prefix = _connection(settings)
    parameters = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    target = f"{prefix}/api/v1/query?{parameters}"
    headers = {"Accept": "application/json", "User-Agent": f"gpu-status-api/{__version__}"}
    if settings.basic_auth is not None:
        token = base64.b64encode(":".join(settings.basic_auth).encode("utf-8")).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    deadline = time.monotonic() + settings.timeout
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        if 300 <= response.status < 400:
            location = response.getheader("Location", "")
            raise EngineError(
                f"HTTP {response.status} redirect to {location!r}, not followed: give the final "
                "address as --prometheus-url"
            )
        body = _read_capped(response, limit=settings.max_body, deadline=deadline)
    except (OSError, http.client.HTTPException) as error:
        if isinstance(error, (socket.timeout, TimeoutError)):
            raise EngineError("no answer within the timeout") from None
        raise EngineError(str(error) or type(error).__name__) from None
    finally:
        connection.close()
    return _samples(response.status, body)


def _samples(status: int, body: bytes) -> list[tuple[dict[str, str], float]]:
    try:
        document: Any = json.loads(body)
    except ValueError:
        raise EngineError(f"HTTP {status}, not a JSON answer: {body[:200]!r}") from None
    if not isinstance(document, dict) or document.get("status") != "success":
        error = document.get("error") if isinstance(document, dict) else None
        detail = str(error)[:500] if error else repr(body[:200])
        raise EngineError(f"HTTP {status}, query failed: {detail}")
    data = document.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise EngineError(f"expected a vector result, got {body[:200]!r}")
    samples = []
    for sample in data.get("result") or []:
        try:
            labels = {str(k): str(v) for k, v in sample["metric"].items()}
            value = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise EngineError(f"malformed sample in the answer: {sample!r:.200}") from None
        if math.isfinite(value):
            samples.append((labels, value))
    return samples


def increases(
    settings: EngineSettings, *, by: str, counter: str, since: str, until: float
) -> dict[str, float]:
    """Per group (``""`` for series without the label): the increase of the recorded counter
    ``<by>:<counter>:total`` over ``since`` up to ``until``."""
    expr = f"sum by ({by}) (increase({by}:{counter}:total[{since}]))"
    return {labels.get(by, ""): value for labels, value in query(settings, expr, at=until)}


def usage(settings: EngineSettings, *, by: str, since: str, until: float) -> list[Row]:
    """The report's rows, most GPU-hours first; groups without GPU time in the window left out."""

    def counted(counter: str) -> dict[str, float]:
        return increases(settings, by=by, counter=counter, since=since, until=until)

    gpu_seconds = counted("gpu_seconds")
    utilization = counted("gpu_utilization_seconds")
    idle = counted("gpu_idle_held_seconds")
    rows = [
        Row(
            key=key,
            gpu_hours=seconds / 3600,
            mean_utilization=utilization[key] / seconds if key in utilization else None,
            idle_held_hours=idle[key] / 3600 if key in idle else None,
        )
        for key, seconds in gpu_seconds.items()
        if seconds > 0
    ]
    return sorted(rows, key=lambda row: (-row.gpu_hours, row.key))


def _printable(text: str) -> str:
    """A label value for a terminal: control characters escaped, so no value rewrites the
    screen or breaks the table's lines."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def render_table(rows: Sequence[Row], *, by: str) -> str:
    header = (by.upper().replace("_", " "), "GPU-HOURS", "MEAN UTIL", "IDLE-HELD HOURS")
    lines = [
        (
            _printable(row.key) if row.key else "(unknown)",
            f"{row.gpu_hours:.2f}",
            "-" if row.mean_utilization is None else f"{row.mean_utilization * 100:.1f}%",
            "-" if row.idle_held_hours is None else f"{row.idle_held_hours:.2f}",
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    return "".join(
        cells[0].ljust(widths[0])
        + "".join("  " + cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        + "\n"
        for cells in [header, *lines]
    )


def render_csv(rows: Sequence[Row], *, by: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, "gpu_hours", "mean_utilization", "idle_held_hours"])
    for row in rows:
        writer.writerow(
            [
                row.key,
                repr(row.gpu_hours),
                "" if row.mean_utilization is None else repr(row.mean_utilization),
                "" if row.idle_held_hours is None else repr(row.idle_held_hours),
            ]
        )
    return out.getvalue()


def render_json(rows: Sequence[Row], *, by: str) -> str:
    document = [
        {
            by: row.key,
            "gpu_hours": row.gpu_hours,
            "mean_utilization": row.mean_utilization,
            "idle_held_hours": row.idle_held_hours,
        }
        for row in rows
    ]
    return json.dumps(document, indent=2) + "\n"


RENDERERS = {"table": render_table, "csv": render_csv, "json": render_json}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-status-api report",
        description="GPU-hours, mean utilization of the held GPUs and idle-held hours per user, "
        "Slurm job or namespace over a window, from the recording rules in Prometheus. Groups "
        "without GPU time in the window are left out.",
    )
    parser.add_argument(
        "--prometheus-url", required=True,
        help="base URL of Prometheus or a compatible engine, e.g. http://prometheus:9090",
    )  # fmt: skip
    parser.add_argument(
        "--since", default="30d",
        help="window length, a Prometheus duration: 30d, 12h, 1w (default 30d)",
    )  # fmt: skip
    parser.add_argument(
        "--until",
        help="window end: Unix seconds or RFC 3339 such as 2024-06-01T00:00:00Z (default now)",
    )
    parser.add_argument(
        "--by", choices=GROUPINGS, default="user",
        help="grouping; reads <by>:gpu_seconds:total and its siblings (default user)",
    )  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="table", help="(default table)")
    parser.add_argument(
        "--prometheus-timeout", type=positive(float), default=DEFAULT_TIMEOUT,
        help=f"seconds one query may take, all included (default {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument(
        "--prometheus-max-body-bytes", type=positive(int), default=DEFAULT_MAX_BODY,
        help="largest answer read (default 16 MiB)",
    )  # fmt: skip
    parser.add_argument("--prometheus-ca-file", type=Path, help="CA certificate(s) for https")
    parser.add_argument("--prometheus-basic-auth-user", help="basic-auth user")
    parser.add_argument(
        "--prometheus-basic-auth-password-file", type=Path,
        help="file whose first line is the basic-auth password",
    )  # fmt: skip
    return parser


def _settings(args: argparse.Namespace) -> EngineSettings:
    """The engine settings, every option checked; ValueError naming the bad one."""
    url = check_url(args.prometheus_url)
    if args.prometheus_ca_file is not None:
        if not url.startswith("https://"):
            raise ValueError("--prometheus-ca-file needs an https:// --prometheus-url")
        if not args.prometheus_ca_file.is_file():
            raise ValueError(f"--prometheus-ca-file: no such file: {args.prometheus_ca_file}")
    user, password_file = args.prometheus_basic_auth_user, args.prometheus_basic_auth_password_file
    if (user is None) != (password_file is None):
        raise ValueError(
            "--prometheus-basic-auth-user and --prometheus-basic-auth-password-file go together"
        )
    auth = None
    if user is not None:
        if ":" in user:  # the header joins user and password with ":"
            raise ValueError(f"--prometheus-basic-auth-user {user!r} must not contain ':'")
        warn_if_exposed(password_file, what="--prometheus-basic-auth-password-file")
        try:
            auth = (user, load_password(password_file=password_file))
        except PasswordError as error:
            raise ValueError(f"--prometheus-basic-auth-password-file: {error}") from None
    if args.prometheus_ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(args.prometheus_ca_file))
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"--prometheus-ca-file {args.prometheus_ca_file}: {error}") from None
    return EngineSettings(
        url=url,
        timeout=args.prometheus_timeout,
        max_body=int(args.prometheus_max_body_bytes),
        ca_file=args.prometheus_ca_file,
        basic_auth=auth,
    )


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(level="info")
    try:
        parse_duration(args.since)
        until = time.time() if args.until is None else parse_time(args.until)
        settings = _settings(args)
    except ValueError as error:
        parser.error(str(error))  # exits 2 with the usage
    try:
        rows = usage(settings, by=args.by, since=args.since, until=until)
    except EngineError as error:
        # The engine's words are printed as they came; escaped, so they cannot drive the terminal.
        message = _printable(f"cannot query {settings.url}: {error}")
        print(f"gpu-status-api report: {message}", file=sys.stderr)
        return 1
    if not rows:
        print(
            f"gpu-status-api report: no GPU time per {args.by} in the last {args.since}; are the "
            f"recording rules with {args.by}:gpu_seconds:total loaded?",
            file=sys.stderr,
        )
    sys.stdout.write(RENDERERS[args.format](rows, by=args.by))
    return 0
