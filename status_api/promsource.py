"""The cluster from a Prometheus-compatible query engine instead of polling the nodes.

With ``--prometheus-url`` the service asks Prometheus (or VictoriaMetrics, or anything that
answers ``/api/v1/query``) every ``interval`` seconds a handful of instant queries, all at the
same evaluation time, and turns the answers into the same per-node :class:`PollResult` objects
the poller makes, so the page, ``/api/v1/cluster`` and the legacy ``/get-status`` are identical in
shape. The scrape targets are the truth: a node is a target of the job (``--prometheus-job``),
named by its ``node`` label (what ``gpu-status-api targets`` writes), else its ``instance``.

Only raw exporter series are read, no recording rules: a VictoriaMetrics single node (which does
not evaluate rules) answers the same way. A node's data is as old as its last successful scrape
(``timestamp(up)``), which is what ``stale_after`` and ``offline_after`` measure; a scrape that
failed (``up == 0``) fails the node's "poll", as does an exporter whose last NVML pass is older
than ``stale_after`` at scrape time (a stalled driver).

When the engine cannot be reached or answers an error, the round fails as a whole: the cluster
keeps every node as it was and shows the error (:meth:`Cluster.fail_round`). As with the nodes,
redirects are never followed (they would carry the basic-auth header elsewhere), every answer is
read up to a byte cap, and every query has a total timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import aiohttp
from yarl import URL

from status_api.hosts import Host
from status_api.nodedata import MAX_GPUS, MAX_SHORT_STRING, MAX_STRING, USER_MEMORY
from status_api.poller import MIB, PollError, PollResult, _read_capped, _refuse_redirect

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * MIB
# An error text from the engine is shown on a public page: this much of it.
_MAX_ERROR_SHOWN = 300

# Families per GPU, with the field of the legacy GPU (or of the power readings) they fill.
_GPU_GAUGES = {
    "gpu_memory_used_bytes": "use_mem",
    "gpu_memory_total_bytes": "tot_mem",
    "gpu_utilization_ratio": "utilize",
    "gpu_temperature_celsius": "temp",
    "gpu_power_watts": "power",
    "gpu_power_limit_watts": "power_limit",
}
_NODE_FAMILIES = ("gpu_node_info", "gpu_exporter_last_collect_timestamp_seconds")
_PROCESS_FAMILIES = ("gpu_process_memory_used_bytes", "gpu_process_info")

Sample = tuple[dict[str, str], float]


class EngineError(Exception):
    """The engine could not be asked or answered an error; the text is shown as is."""


@dataclass(frozen=True)
class EngineSettings:
    """How to reach the engine. ``basic_auth`` is called once per round (a rotated file is seen)."""

    url: str
    job: str = "gpu"
    timeout: float = 5.0
    max_body: int = DEFAULT_MAX_BODY
    ca_file: Path | None = None
    basic_auth: Callable[[], tuple[str, str]] | None = None


def _selector(job: str, names: Sequence[str]) -> str:
    """A selector of ``names`` in ``job``; one query reads several families."""
    pattern = "|".join(names)
    return f'{{__name__=~"{pattern}",job={json.dumps(job)}}}'


# The labels the round reads from the per-GPU and per-process answers. The engine drops every
# other one (uuid, job, node, serial, pci_bus_id, attribution) before encoding its answer: at
# 2,000 nodes x 8 GPUs that cuts the answers by a third and the engine's time to encode them about
# threefold (docs/scaling.md, "Measured").
_GPU_LABELS = ("__name__", "instance", "gpu", "name")
_PROCESS_LABELS = ("__name__", "instance", "gpu", "pid", "mig_uuid", "user", "command")


def _only(labels: Sequence[str], selector: str) -> str:
    """``selector`` with only ``labels`` kept; a label a series lacks stays absent."""
    return f"max by ({', '.join(labels)}) ({selector})"


def queries(job: str) -> dict[str, str]:
    """The instant queries of one round, by what they are for; ``gpu/<family>`` and
    ``process/<family>`` are one query per family (see :func:`merged`)."""
    up = f"up{{job={json.dumps(job)}}}"
    wanted = {"up": up, "scraped": f"timestamp({up})", "node": _selector(job, _NODE_FAMILIES)}
    # One family per query: the engine answers them in parallel, and decoding each answer
    # holds the interpreter lock for tens of milliseconds, not half a second, so requests to
    # the page are served in between.
    for family in ("gpu_info", *_GPU_GAUGES):
        wanted[f"gpu/{family}"] = _only(_GPU_LABELS, f"{family}{{job={json.dumps(job)}}}")
    for family in _PROCESS_FAMILIES:
        wanted[f"process/{family}"] = _only(_PROCESS_LABELS, f"{family}{{job={json.dumps(job)}}}")
    return wanted


def merged(answers: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
    """The answers of :func:`queries` by purpose: ``gpu/<family>`` answers joined as ``gpu``."""
    joined: dict[str, list[Sample]] = {}
    for name, samples in answers.items():
        joined.setdefault(name.partition("/")[0], []).extend(samples)
    return joined


def ssl_context(settings: EngineSettings) -> ssl.SSLContext | None:
    if URL(settings.url).scheme != "https":
        return None
    return ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)


def _shown(text: str) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= _MAX_ERROR_SHOWN else text[:_MAX_ERROR_SHOWN] + "..."


def _vector(body: bytes, query: str) -> list[Sample]:
    """The samples of an instant-vector answer; EngineError for anything else."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise EngineError(f"answer to {query} is not JSON") from None
    if not isinstance(document, dict):
        raise EngineError(f"answer to {query} is not a JSON object")
    if document.get("status") != "success":
        kind = document.get("errorType", "error")
        raise EngineError(_shown(f"{kind}: {document.get('error', 'no error text')}"))
    data = document.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise EngineError(f"answer to {query} is not an instant vector")
    samples: list[Sample] = []
    for item in data.get("result") or []:
        try:
            labels, (_, raw) = item["metric"], item["value"]
            value = float(raw)
        except (KeyError, TypeError, ValueError):
            continue  # one malformed sample is dropped, not the round
        if isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values()):
            samples.append((labels, value))
    return samples


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _mib(value: float | None) -> int | None:
    value = _finite(value)
    return None if value is None or value < 0 else int(value) // MIB


def _legacy_value(field: str, value: float | None) -> int | float | None:
    """A gauge in the legacy JSON's unit, rounded as the exporter rounds its own JSON."""
    value = _finite(value)
    if value is None:
        return None
    if field in ("use_mem", "tot_mem"):
        return _mib(value)
    if field == "utilize":
        return round(value * 100)
    if field == "temp":
        return round(value)
    return round(value, 1)  # power, W, as the poller reads it from /metrics


def _host(instance: str, node: str) -> Host | None:
    """The target as a Host: address and port from ``instance``, shown as ``node``."""
    name, _, port = instance.rpartition(":")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    ipv6 = name.startswith("[") and name.endswith("]")
    return Host(
        name=name[1:-1] if ipv6 else name,
        port=int(port),
        text=(node or instance)[:MAX_SHORT_STRING],
        ipv6=ipv6,
    )


def _index(labels: dict[str, str]) -> int | None:
    text = labels.get("gpu", "")
    return int(text) if text.isdigit() and len(text) <= 6 else None


@dataclass
class _Node:
    host: Host
    up: bool
    scraped: float | None = None
    hostname: str = ""
    collected: float | None = None
    gpus: dict[int, dict[str, Any]] | None = None
    power: dict[int, dict[str, float]] | None = None


def _gpu(index: int) -> dict[str, Any]:
    return {"index": index, "name": "", "use_mem": None, "tot_mem": None, "utilize": None,
            "temp": None, "users": []}  # fmt: skip


def _collect_gpus(node: _Node, samples: list[Sample]) -> None:
    gpus: dict[int, dict[str, Any]] = {}
    power: dict[int, dict[str, float]] = {}
    for labels, value in samples:
        index = _index(labels)
        if index is None or (index not in gpus and len(gpus) >= MAX_GPUS):
            continue
        gpu = gpus.setdefault(index, _gpu(index))
        family = labels.get("__name__", "")
        if family == "gpu_info":
            gpu["name"] = labels.get("name", "")[:MAX_SHORT_STRING]
            continue
        field = _GPU_GAUGES.get(family)
        reading = _legacy_value(field, value) if field else None
        if field in ("power", "power_limit"):
            if reading is not None and reading >= 0:
                power.setdefault(index, {})[field] = reading
        elif field is not None:
            gpu[field] = reading
    node.gpus, node.power = gpus, power


def _collect_processes(node: _Node, samples: list[Sample]) -> None:
    """Users per GPU: a process is its (gpu, pid, mig_uuid); memory and command joined on it."""
    users: dict[tuple[int, int, str], dict[str, Any]] = {}
    for labels, value in samples:
        index, pid = _index(labels), labels.get("pid", "")
        if index is None or node.gpus is None or index not in node.gpus or not pid.isdigit():
            continue
        key = (index, int(pid), labels.get("mig_uuid", ""))
        user = users.setdefault(
            key,
            {"pid": int(pid), "username": labels.get("user", "")[:MAX_SHORT_STRING],
             USER_MEMORY: None, "command": ""},
        )  # fmt: skip
        if labels.get("__name__") == "gpu_process_memory_used_bytes":
            user[USER_MEMORY] = _mib(value)
        elif "command" in labels:
            user["command"] = labels["command"][:MAX_STRING]
    for (index, _, _), user in sorted(users.items()):
        node.gpus[index]["users"].append(user)  # type: ignore[index]


def _by_instance(samples: list[Sample], nodes: dict[str, _Node]) -> dict[str, list[Sample]]:
    grouped: dict[str, list[Sample]] = {}
    for labels, value in samples:
        instance = labels.get("instance", "")
        if instance in nodes:
            grouped.setdefault(instance, []).append((labels, value))
    return grouped


def _last_update(timestamp: float | None) -> str:
    """The exporter's last pass as its own JSON writes it (ISO time, this machine's zone)."""
    if timestamp is None or not 0 < timestamp < 1e11:
        return ""
    return datetime.fromtimestamp(timestamp).isoformat(timespec="microseconds")


def _result(node: _Node, *, stale_after: float, duration: float) -> PollResult:
    finished = node.scraped if node.scraped is not None else time.time()
    if not node.up:
        error = "scrape failed (up == 0): the engine cannot read the exporter's /metrics"
        return PollResult(node.host, None, error, finished, duration)
    if node.collected is not None and finished - node.collected > stale_after:
        error = f"the exporter's last NVML pass was {finished - node.collected:.0f} s old"
        return PollResult(node.host, None, error, finished, duration)
    gpus = node.gpus or {}
    status = {
        "hostname": node.hostname or node.host.name,
        "last_update": _last_update(node.collected),
        "ips": [],  # the exporter publishes no addresses on /metrics
        "gpus": [gpus[index] for index in sorted(gpus)],
    }
    return PollResult(node.host, status, "", finished, duration, node.power or {})


def build_results(
    answers: dict[str, list[Sample]], *, stale_after: float, duration: float = 0.0
) -> tuple[list[Host], list[PollResult]]:
    """The targets (ordered by node name) and their results from one round's answers."""
    nodes: dict[str, _Node] = {}
    for labels, value in answers["up"]:
        instance = labels.get("instance", "")
        host = _host(instance, labels.get("node", ""))
        if host is not None and instance not in nodes:
            nodes[instance] = _Node(host, up=value == 1)
    for instance, samples in _by_instance(answers["scraped"], nodes).items():
        nodes[instance].scraped = _finite(samples[0][1])
    for instance, samples in _by_instance(answers["node"], nodes).items():
        for labels, value in samples:
            if labels.get("__name__") == "gpu_node_info":
                nodes[instance].hostname = labels.get("hostname", "")[:MAX_SHORT_STRING]
            else:
                nodes[instance].collected = _finite(value)
    gpu_samples = _by_instance(answers["gpu"], nodes)
    process_samples = _by_instance(answers["process"], nodes)
    for instance, node in nodes.items():
        _collect_gpus(node, gpu_samples.get(instance, []))
        _collect_processes(node, process_samples.get(instance, []))
    ordered = sorted(nodes.values(), key=lambda node: (node.host.text, node.host.key))
    hosts = [node.host for node in ordered]
    keys = set()
    unique = []
    for host in hosts:  # two jobs' targets may share an address; the first one wins
        if host.key not in keys:
            keys.add(host.key)
            unique.append(host)
    by_key = {node.host.key: node for node in reversed(ordered)}
    results = [
        _result(by_key[host.key], stale_after=stale_after, duration=duration) for host in unique
    ]
    return unique, results


def _error_text(error: BaseException, settings: EngineSettings) -> str:
    if isinstance(error, (EngineError, PollError)):
        return str(error)
    if isinstance(error, asyncio.TimeoutError):
        return f"no answer within {settings.timeout:g} s"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect: {error.os_error.strerror or error.os_error}"
    if isinstance(error, aiohttp.ClientError):
        return _shown(f"HTTP client error: {type(error).__name__}: {error}")
    return _shown(f"query failed: {type(error).__name__}: {error}")


class EngineClient:
    """Runs the round's queries over one aiohttp session; create it inside a running loop."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._endpoint = URL(settings.url.rstrip("/") + "/api/v1/query")
        context = ssl_context(settings)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context if context is not None else False),
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
            headers={"User-Agent": "gpu-status-api"},
        )

    async def close(self) -> None:
        await self._session.close()

    async def query(self, expr: str, at: float, auth: aiohttp.BasicAuth | None) -> list[Sample]:
        form = {"query": expr, "time": f"{at:.3f}"}
        # POST keeps long selectors out of URLs and logs; never follow a redirect.
        async with self._session.post(
            self._endpoint, data=form, auth=auth, allow_redirects=False
        ) as response:
            _refuse_redirect(response, "/api/v1/query")
            body = await _read_capped(response, self.settings.max_body)
            if response.status != 200 and not body.lstrip().startswith(b"{"):
                raise EngineError(f"HTTP {response.status} from /api/v1/query")
        return _vector(body, expr)

    async def round(self, *, stale_after: float) -> tuple[list[Host], list[PollResult]]:
        """One round; EngineError (or a client error) when any query fails."""
        started = time.monotonic()
        auth = aiohttp.BasicAuth(*self.settings.basic_auth()) if self.settings.basic_auth else None
        at = time.time()
        wanted = queries(self.settings.job)
        answers = await asyncio.gather(*(self.query(expr, at, auth) for expr in wanted.values()))
        return build_results(
            merged(dict(zip(wanted, answers))),
            stale_after=stale_after,
            duration=time.monotonic() - started,
        )


class EngineSource:
    """Asks the engine every ``interval`` seconds in a background thread until :meth:`stop`;
    feeds ``cluster.update`` (or ``cluster.fail_round``)."""

    def __init__(self, *, settings: EngineSettings, interval: float, cluster: Any) -> None:
        self._settings = settings
        self._interval = interval
        self._cluster = cluster
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._last_error = ""
        # Shown on the page: never the credentials someone may have written into the URL.
        self._shown_url = str(URL(settings.url).with_user(None))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engine-source", daemon=True)
        self._thread.start()
        self._started.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> None:
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
        client = EngineClient(self._settings)
        self._started.set()
        try:
            while True:
                started = time.monotonic()
                await self._round(client)
                remaining = self._interval - (time.monotonic() - started)
                if remaining > 0:
                    await asyncio.sleep(remaining)
        finally:
            await client.close()

    async def _round(self, client: EngineClient) -> None:
        started = time.monotonic()
        stale_after = self._cluster.thresholds.stale_after
        try:
            hosts, results = await asyncio.wait_for(
                client.round(stale_after=stale_after), self._settings.timeout + 1.0
            )
        except asyncio.CancelledError:
            raise
        except Exception as caught:
            if not isinstance(caught, (EngineError, PollError, aiohttp.ClientError)):
                log.debug("unexpected error querying the engine", exc_info=True)
            error = f"{self._shown_url}: {_error_text(caught, self._settings)}"
            if error != self._last_error:
                log.error("query engine: %s; keeping the last state", error)
            self._last_error = error
            self._cluster.fail_round(error, time.monotonic() - started)
            return
        if self._last_error:
            log.info("query engine answers again")
        self._last_error = ""
        self._cluster.update(hosts, results, time.monotonic() - started)
