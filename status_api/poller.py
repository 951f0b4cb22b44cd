"""Polling every node's ``POST /get-status``: concurrent, bounded in time, memory and sockets.

One background thread runs an asyncio loop with one aiohttp session. A round polls every node of
hosts.txt at once, at most ``concurrency`` at a time; each poll has a connect timeout and a total
timeout (connect, send, wait, read), and reads at most ``max_body`` bytes, so a dead, slow,
garbage-spewing or huge node costs one slot for a bounded time and nothing else. Rounds start every
``interval`` seconds and never overlap: a round that runs long delays the next one. Nodes that
failed the previous round are started first, so their timeouts run alongside the fast nodes
instead of after them. Connections are kept alive between rounds, which makes a steady-state
round much cheaper than the first.

The legacy JSON has no power readings, so every ``power_interval`` seconds a node's ``/metrics``
is read too (in the same time budget) for ``gpu_power_watts`` and ``gpu_power_limit_watts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp
from yarl import URL

from status_api.hosts import Host
from status_api.nodedata import NodeDataError, parse_status
from status_api.nodemetrics import parse_power

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_MAX_BODY = 4 * MIB
_CHUNK = 64 * 1024
# Shorter than the exporter's idle timeout (10 s), so we never reuse a socket it is closing.
_KEEPALIVE_SECONDS = 5.0
# A node without /metrics (an old node_info.py) is asked again only after this long.
_NO_METRICS_RETRY_SECONDS = 600.0
MAX_CACHED_URLS = 100_000


@dataclass(frozen=True)
class PollSettings:
    """How to reach the nodes. ``password`` and the basic-auth password are called once per round,
    so a rotated file is seen."""

    password: Callable[[], str]
    scheme: str = "http"
    timeout: float = 1.5
    connect_timeout: float = 1.0
    concurrency: int = 1024
    max_body: int = DEFAULT_MAX_BODY
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    basic_auth: tuple[str, Callable[[], str]] | None = None  # user, password
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

    @property
    def ok(self) -> bool:
        return self.status is not None


class PollError(Exception):
    """A poll failed for a reason worth showing to a person as is."""


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
    if isinstance(error, PollError):
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


def _refusal(status: int, body: bytes) -> str:
    """The text for a non-200 answer, with the node's JSON error message when it gave one."""
    message = ""
    with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        message = str(json.loads(body).get("error", ""))
    if status == 403 and not message:
        message = "wrong password"
    text = f"HTTP {status}" + (f": {message}" if message else "")
    return text[:200]


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise PollError(f"answer of {response.content_length} bytes is over the {limit} byte cap")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PollError(f"answer is over the {limit} byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


class NodeClient:
    """Polls nodes over one aiohttp session; create and use it inside a running loop."""

    def __init__(self, settings: PollSettings) -> None:
        self.settings = settings
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._no_metrics: dict[tuple[str, int], float] = {}
        self._next_power: dict[tuple[str, int], float] = {}
        self._urls: dict[tuple[str, str], URL] = {}
        context = ssl_context(settings)
        connector = aiohttp.TCPConnector(
            limit=0,  # the semaphore bounds concurrency; idle keep-alive sockets are cheap
            ssl=context if context is not None else False,
            keepalive_timeout=_KEEPALIVE_SECONDS,
            ttl_dns_cache=60,
        )
        self._auth = self._basic_auth()
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=settings.timeout, sock_connect=settings.connect_timeout
            ),
            headers={"User-Agent": "gpu-status-api", "Content-Type": "application/json"},
            raise_for_status=False,
        )

    def _basic_auth(self) -> aiohttp.BasicAuth | None:
        if self.settings.basic_auth is None:
            return None
        user, password = self.settings.basic_auth
        return aiohttp.BasicAuth(user, password())

    async def close(self) -> None:
        await self._session.close()

    def _url(self, host: Host, path: str) -> URL:
        """Parsed once per node: parsing a URL (host checks included) costs more than the poll."""
        key = (host.netloc, path)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) > 4 * MAX_CACHED_URLS:  # hosts.txt changed a lot; start over
                self._urls.clear()
            url = self._urls[key] = URL(host.url(path, scheme=self.settings.scheme))
        return url

    async def _fetch(
        self, host: Host, body: bytes, deadline: float
    ) -> tuple[dict[str, Any], dict[int, dict[str, float]] | None]:
        url = self._url(host, self.settings.path)
        timeout = max(0.05, deadline - time.monotonic())
        limits = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(timeout, self.settings.connect_timeout)
        )
        async with self._session.post(url, data=body, timeout=limits, auth=self._auth) as response:
            data = await _read_capped(response, self.settings.max_body)
            if response.status != 200:
                raise PollError(_refusal(response.status, data[:4096]))
        try:
            status = parse_status(data)
        except NodeDataError as error:
            raise PollError(f"bad answer: {error}") from None
        return status, await self._power(host, deadline)

    def _power_due(self, host: Host, now: float) -> bool:
        if not self.settings.fetch_power:
            return False
        due = self._next_power.get(host.key)
        if due is not None and due > now:
            return False
        # After the first reading, spread the nodes' readings over the rounds.
        spread = random.uniform(0.5, 1.0) if due is None else 1.0
        self._next_power[host.key] = now + self.settings.power_interval * spread
        return True

    async def _power(self, host: Host, deadline: float) -> dict[int, dict[str, float]] | None:
        """Power per GPU from the node's /metrics, when due; {} (never an error) when
        unavailable. A scrape costs as much as the status itself, hence not every round."""
        now = time.monotonic()
        if not self._power_due(host, now):
            return None
        if self._no_metrics.get(host.key, 0.0) > now or deadline - now < 0.05:
            return {}
        url = self._url(host, "/metrics")
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=deadline - now), auth=self._auth
            ) as response:
                if response.status == 404:
                    self._no_metrics[host.key] = now + _NO_METRICS_RETRY_SECONDS
                    return {}
                if response.status != 200:
                    return {}
                return parse_power(await _read_capped(response, self.settings.max_body))
        except (aiohttp.ClientError, asyncio.TimeoutError, PollError):
            return {}

    async def poll(
        self, host: Host, body: bytes, *, round_start: float | None = None
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
                status, power = await asyncio.wait_for(
                    self._fetch(host, body, deadline), self.settings.timeout + 1.0
                )
                error = ""
            except asyncio.CancelledError:
                raise
            except Exception as caught:
                if not isinstance(caught, (PollError, aiohttp.ClientError, asyncio.TimeoutError)):
                    log.debug("unexpected error polling %s", host.text, exc_info=True)
                status, power, error = None, None, _error_text(caught, self.settings)
            duration = time.monotonic() - started
            return PollResult(host, status, error, time.time(), duration, power)

    async def poll_all(self, hosts: Sequence[Host]) -> list[PollResult]:
        """Poll every host once; results come back in the order of ``hosts``."""
        body = json.dumps({"passwd": self.settings.password()}).encode("utf-8")
        self._auth = self._basic_auth()
        start = time.monotonic()
        polls = (self.poll(host, body, round_start=start) for host in hosts)
        return list(await asyncio.gather(*polls))


def _priority_order(hosts: Sequence[Host], failed: set[tuple[str, int]]) -> list[Host]:
    """Previously failed nodes first: their timeouts then overlap with everyone else's work."""
    return [h for h in hosts if h.key in failed] + [h for h in hosts if h.key not in failed]


RoundCallback = Callable[[Sequence[Host], list[PollResult], float], None]


class Poller:
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
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)
        self._thread.start()
        self._started.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop now, abandoning a round in progress (its answers would be thrown away anyway)."""
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._task = loop.create_task(self._main())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
        finally:
            loop.close()

    async def _main(self) -> None:
        client = NodeClient(self._settings)
        self._started.set()
        failed: set[tuple[str, int]] = set()
        try:
            while True:
                started = time.monotonic()
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
