"""Polling every node's ``POST /get-status``: concurrent, bounded in time, memory and sockets.

One background thread runs an asyncio loop with one aiohttp session. A round polls every node of
hosts.txt at once, at most ``concurrency`` at a time; each poll has a connect timeout and a total
timeout (connect, send, wait, read), and reads at most ``max_body`` bytes, so a dead, slow,
garbage-spewing or huge node costs one slot for a bounded time and nothing else. Rounds start every
``interval`` seconds and never overlap: a round that runs long delays the next one. Nodes that
failed the previous round are started first, so their timeouts run alongside the fast nodes
instead of after them. Connections are kept alive between rounds, which makes a steady-state
round much cheaper than the first.

The legacy JSON has no power readings and no attribution, so every ``power_interval`` seconds a
node's ``/metrics`` is read too (in the same time budget) and parsed once for power, health and
MIG devices per GPU and, per process, its Slurm job, pod, container, MIG device and SM
utilization (status_api/nodemetrics.py).

Redirects are never followed: any user can bind a node's unprivileged port, and a redirect would
hand the password (request body) and the basic-auth header to whatever the answer points at. A
3xx answer fails the poll. What the client remembers about a node (parsed URLs, when to read its
power next, that it has no ``/metrics``) is forgotten when the node leaves hosts.txt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp
from yarl import URL

from status_api.answers import AnswerTooLarge, read_capped
from status_api.hosts import Host
from status_api.loopthread import LoopThread, gc_paused
from status_api.nodedata import NodeDataError, parse_status
from status_api.nodemetrics import (
    GpuHealth,
    MigDevice,
    NodeMetrics,
    ProcessMetrics,
    parse_metrics,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_MAX_BODY = 4 * MIB
# Shorter than the exporter's idle timeout (10 s), so we never reuse a socket it is closing.
_KEEPALIVE_SECONDS = 5.0
# A node without /metrics (an old node_info.py) is asked again only after this long.
_NO_METRICS_RETRY_SECONDS = 600.0
# A Location header is the node's text, shown on a public page: this much of it, printable ASCII.
_MAX_LOCATION_SHOWN = 100


@dataclass(frozen=True)
class PollSettings:
    """How to reach the nodes. ``password`` and ``basic_auth`` (user, password) are called once
    per round, so a rotated file is seen."""

    password: Callable[[], str]
    scheme: str = "http"
    timeout: float = 1.5
    connect_timeout: float = 1.0
    concurrency: int = 1024
    max_body: int = DEFAULT_MAX_BODY
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    basic_auth: Callable[[], tuple[str, str]] | None = None
    path: str = "/get-status"
    fetch_power: bool = True  # also read power from the node's /metrics ...
    power_interval: float = 10.0  # ... at most this often per node (0: every round)


@dataclass(frozen=True)
class PollResult:
    """One node's answer to one poll: its checked status, or why there is none."""

    host: Host
    status: dict[str, Any] | None
    error: str
    finished_at: float  # this machine's wall clock, seconds since the epoch
    duration: float
    # Power per GPU index; None when this poll did not ask (the previous readings still hold).
    power: dict[int, dict[str, float]] | None = None
    # Attribution per (GPU index, pid), from the same read; None exactly when power is None.
    processes: dict[tuple[int, int], ProcessMetrics] | None = None
    uuids: dict[int, str] | None = None  # GPU uuid per index, from the same read
    health: dict[int, GpuHealth] | None = None  # health per GPU index, from the same read
    migs: dict[int, list[MigDevice]] | None = None  # MIG devices per GPU index, same read

    @property
    def ok(self) -> bool:
        return self.status is not None


class PollError(Exception):
    """A poll failed for a reason worth showing to a person as is."""


class RedirectRefused(PollError):
    """A node answered with a redirect, which is never followed."""


def ssl_context(settings: PollSettings) -> ssl.SSLContext | None:
    """The client TLS context for https nodes: system CAs or ``ca_file``, optional client cert."""
    if settings.scheme != "https":
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.client_cert is not None:
        context.load_cert_chain(
            str(settings.client_cert), str(settings.client_key) if settings.client_key else None
        )
    return context


def _error_text(error: BaseException, settings: PollSettings) -> str:
    """A short, human explanation of a failed poll (no traceback, no repr soup)."""
    if isinstance(error, (PollError, AnswerTooLarge)):
        return str(error)
    if isinstance(error, asyncio.TimeoutError):
        return f"no answer within {settings.timeout:g} s"
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted: {error.certificate_error}"
    if isinstance(error, aiohttp.ClientSSLError):
        return f"TLS error: {error}"
    if isinstance(error, aiohttp.ClientConnectorError):
        os_error = error.os_error
        # asyncio puts "Connect call failed (...)" in strerror; the errno says it plainly.
        reason = os.strerror(os_error.errno) if os_error.errno else str(os_error)
        reason = reason or type(os_error).__name__
        return f"cannot connect: {reason}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "connection closed by the node before it answered"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "answer cut short or badly encoded"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"bad HTTP answer: {error.message}"[:200]
    if isinstance(error, aiohttp.ClientError):
        return f"HTTP client error: {type(error).__name__}: {error}"[:200]
    return f"poll failed: {type(error).__name__}: {error}"[:200]


OLD_NODE_WRONG_PASSWORD = "an old node_info.py answers 404 to a wrong password; check the password"


def _refusal(status: int, body: bytes) -> str:
    """The text for a non-200 answer, with the node's JSON error message when it gave one."""
    message = ""
    with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        message = str(json.loads(body).get("error", ""))
    if status == 403 and not message:
        message = "wrong password"
    if status == 404:
        # node_info.py answers a wrong password with Flask's 404 page, not with 403; a real
        # missing path is unlikely, since every version of the node serves this one.
        message = f"{message[:80] or 'not found'} ({OLD_NODE_WRONG_PASSWORD})"
    text = f"HTTP {status}" + (f": {message}" if message else "")
    return text[:200]


def _shown_location(location: str) -> str:
    """The Location header as safe to show: printable ASCII only, cut to a sane length."""
    text = "".join(c if " " <= c <= "~" else "?" for c in location[: _MAX_LOCATION_SHOWN + 1])
    return text if len(text) <= _MAX_LOCATION_SHOWN else text[:_MAX_LOCATION_SHOWN] + "..."


def _refuse_redirect(response: aiohttp.ClientResponse, path: str) -> None:
    """Raise :class:`RedirectRefused` for a 3xx answer (its body is never read)."""
    if not 300 <= response.status < 400:
        return
    location = response.headers.get("Location", "")
    target = f" to {_shown_location(location)}" if location else ""
    raise RedirectRefused(
        f"{path}: HTTP {response.status} redirect{target} refused: redirects are never followed"
    )


@dataclass
class _NodeMemo:
    """What the client remembers about one node between rounds."""

    netloc: str
    status_url: URL
    metrics_url: URL
    next_power: float | None = None  # monotonic time the next power read is due
    no_metrics_until: float = 0.0  # the node answered /metrics with 404: ask again after this


class NodeClient:
    """Polls nodes over one aiohttp session; create and use it inside a running loop."""

    def __init__(self, settings: PollSettings) -> None:
        self.settings = settings
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        # Per node, by Host.key; only nodes of the latest poll_all() (see forget_others()).
        self._memos: dict[tuple[str, int], _NodeMemo] = {}
        context = ssl_context(settings)
        connector = aiohttp.TCPConnector(
            limit=0,  # the semaphore bounds concurrency; idle keep-alive sockets are cheap
            ssl=context if context is not None else False,
            keepalive_timeout=_KEEPALIVE_SECONDS,
            ttl_dns_cache=60,
        )
        self._connector = connector
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=settings.timeout, sock_connect=settings.connect_timeout
            ),
            headers={"User-Agent": "gpu-status-api", "Content-Type": "application/json"},
            raise_for_status=False,
        )

    async def close(self) -> None:
        await self._session.close()

    @property
    def remembered(self) -> set[tuple[str, int]]:
        """The nodes (Host.key) this client keeps any state about."""
        return set(self._memos)

    def forget_others(self, hosts: Sequence[Host]) -> None:
        """Drop everything remembered about nodes not in ``hosts``: a node that comes back later
        is polled afresh (power read at once, /metrics asked again, its name resolved again)."""
        wanted = {host.key for host in hosts}
        for key, memo in list(self._memos.items()):
            if key not in wanted:
                del self._memos[key]
                name, port = memo.status_url.raw_host, memo.status_url.port
                if name is not None and port is not None:
                    self._connector.clear_dns_cache(name, port)

    def _memo(self, host: Host) -> _NodeMemo:
        """Parsed once per node: parsing a URL (host checks included) costs more than the poll."""
        memo = self._memos.get(host.key)
        if memo is None or memo.netloc != host.netloc:  # new, or spelled differently now
            scheme = self.settings.scheme
            memo = self._memos[host.key] = _NodeMemo(
                netloc=host.netloc,
                status_url=URL(host.url(self.settings.path, scheme=scheme)),
                metrics_url=URL(host.url("/metrics", scheme=scheme)),
            )
        return memo

    def _request(
        self, method: str, url: URL, *, auth: aiohttp.BasicAuth | None, **options: Any
    ) -> Any:
        """Every request to a node goes through here: never follow a redirect."""
        return self._session.request(method, url, auth=auth, allow_redirects=False, **options)

    async def _fetch(
        self, host: Host, body: bytes, auth: aiohttp.BasicAuth | None, deadline: float
    ) -> tuple[dict[str, Any], NodeMetrics | None]:
        memo = self._memo(host)
        timeout = max(0.05, deadline - time.monotonic())
        limits = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(timeout, self.settings.connect_timeout)
        )
        async with self._request(
            "POST", memo.status_url, auth=auth, data=body, timeout=limits
        ) as response:
            _refuse_redirect(response, self.settings.path)
            data = await read_capped(response, self.settings.max_body)
            if response.status != 200:
                raise PollError(_refusal(response.status, data[:4096]))
        try:
            status = parse_status(data)
        except NodeDataError as error:
            raise PollError(f"bad answer: {error}") from None
        return status, await self._power(memo, auth, deadline)

    def _power_due(self, memo: _NodeMemo, now: float) -> bool:
        if not self.settings.fetch_power:
            return False
        due = memo.next_power
        if due is not None and due > now:
            return False
        # After the first reading, spread the nodes' readings over the rounds.
        spread = random.uniform(0.5, 1.0) if due is None else 1.0
        memo.next_power = now + self.settings.power_interval * spread
        return True

    async def _power(
        self, memo: _NodeMemo, auth: aiohttp.BasicAuth | None, deadline: float
    ) -> NodeMetrics | None:
        """Power and attribution from the node's /metrics, when due; empty when unavailable. A
        scrape costs as much as the status itself, hence not every round. Only a redirect is an
        error: the node (or whatever holds its port) tried to send the credentials elsewhere."""
        now = time.monotonic()
        if not self._power_due(memo, now):
            return None
        if memo.no_metrics_until > now or deadline - now < 0.05:
            return NodeMetrics()
        limits = aiohttp.ClientTimeout(total=deadline - now)
        try:
            async with self._request(
                "GET", memo.metrics_url, auth=auth, timeout=limits
            ) as response:
                _refuse_redirect(response, "/metrics")
                if response.status == 404:
                    memo.no_metrics_until = now + _NO_METRICS_RETRY_SECONDS
                    return NodeMetrics()
                if response.status != 200:
                    return NodeMetrics()
                return parse_metrics(await read_capped(response, self.settings.max_body))
        except RedirectRefused:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, PollError, AnswerTooLarge):
            return NodeMetrics()

    async def poll(
        self,
        host: Host,
        body: bytes,
        *,
        auth: aiohttp.BasicAuth | None = None,
        round_start: float | None = None,
    ) -> PollResult:
        """Poll one node. The timeout runs from ``round_start`` unless the poll had to wait for
        a free slot: starting a thousand tasks takes a while, and the last one started should
        not finish later than the first for that reason alone."""
        waited = self._semaphore.locked()
        async with self._semaphore:
            started = time.monotonic()
            origin = started if waited or round_start is None else min(round_start, started)
            deadline = origin + self.settings.timeout
            try:
                # The request timeout covers the exchange; this guard also covers the parse.
                status, metrics = await asyncio.wait_for(
                    self._fetch(host, body, auth, deadline), self.settings.timeout + 1.0
                )
                error = ""
            except asyncio.CancelledError:
                raise
            except Exception as caught:
                if not isinstance(
                    caught, (PollError, AnswerTooLarge, aiohttp.ClientError, asyncio.TimeoutError)
                ):
                    log.debug("unexpected error polling %s", host.text, exc_info=True)
                status, metrics, error = None, None, _error_text(caught, self.settings)
            duration = time.monotonic() - started
            if metrics is None:
                return PollResult(host, status, error, time.time(), duration)
            return PollResult(
                host,
                status,
                error,
                time.time(),
                duration,
                metrics.power,
                metrics.processes,
                metrics.uuids,
                metrics.health,
                metrics.migs,
            )

    async def poll_all(self, hosts: Sequence[Host]) -> list[PollResult]:
        """One round: poll every host once; results come back in the order of ``hosts``.
        ``hosts`` is the whole list: whatever is remembered about other nodes is forgotten."""
        self.forget_others(hosts)
        body = json.dumps({"passwd": self.settings.password()}).encode("utf-8")
        auth = aiohttp.BasicAuth(*self.settings.basic_auth()) if self.settings.basic_auth else None
        start = time.monotonic()
        polls = (self.poll(host, body, auth=auth, round_start=start) for host in hosts)
        return list(await asyncio.gather(*polls))


def _priority_order(hosts: Sequence[Host], failed: set[tuple[str, int]]) -> list[Host]:
    """Previously failed nodes first: their timeouts then overlap with everyone else's work."""
    return [h for h in hosts if h.key in failed] + [h for h in hosts if h.key not in failed]


RoundCallback = Callable[[Sequence[Host], list[PollResult], float], None]


class Poller(LoopThread):
    """Runs polling rounds in a background thread until :meth:`stop`.

    ``hosts`` is called before each round (it may re-read hosts.txt); ``on_round(hosts, results,
    round_seconds)`` is called after each round with results in hosts.txt order.
    """

    def __init__(
        self,
        *,
        hosts: Callable[[], Sequence[Host]],
        settings: PollSettings,
        interval: float,
        on_round: RoundCallback,
    ) -> None:
        self._hosts = hosts
        self._settings = settings
        self._interval = interval
        self._on_round = on_round
        super().__init__(name="poller")

    async def _main(self) -> None:
        client = NodeClient(self._settings)
        self._ready()
        failed: set[tuple[str, int]] = set()
        try:
            while True:
                started = time.monotonic()
                with gc_paused():
                    failed = await self._round(client, failed)
                remaining = self._interval - (time.monotonic() - started)
                if remaining > 0:
                    await asyncio.sleep(remaining)
        finally:
            await client.close()

    async def _round(
        self, client: NodeClient, failed: set[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        started = time.monotonic()
        try:
            hosts = list(self._hosts())
            results = await client.poll_all(_priority_order(hosts, failed))
            by_key = {result.host.key: result for result in results}
            ordered = [by_key[host.key] for host in hosts]
            self._on_round(hosts, ordered, time.monotonic() - started)
        except Exception:
            # A bug in one round must not end polling for good; the next round tries again.
            log.exception("polling round failed")
            return failed
        return {result.host.key for result in ordered if not result.ok}
