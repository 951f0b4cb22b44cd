"""The cluster from a Prometheus-compatible query engine instead of polling the nodes.

With ``--prometheus-url`` the service asks Prometheus (or VictoriaMetrics, or anything that
answers ``/api/v1/query``) every ``interval`` seconds one instant query per family, all at the
same evaluation time (the families that change with the hardware only every minute,
:class:`SlowAnswers`), and turns the answers into the same per-node :class:`PollResult` objects
the poller makes, so the page, ``/api/v1/cluster`` and the legacy ``/get-status`` are identical in
shape, the per-process attribution, GPU health and MIG devices that polling reads from
``/metrics`` included (mapped by status_api/nodemetrics.py). The scrape targets are the truth:
a node is a target of the job (``--prometheus-job``), named by its ``node`` label (what
``gpu-status-api targets`` writes), else its ``instance``.

Only raw exporter series are read, no recording rules: a VictoriaMetrics single node (which does
not evaluate rules) answers the same way. A node's data is as old as its last successful scrape
(``timestamp(up)``), which is what ``stale_after`` and ``offline_after`` measure; a scrape that
failed (``up == 0``) fails the node's "poll", as does an exporter whose last NVML pass is older
than ``stale_after`` at scrape time (a stalled driver).

When the engine cannot be reached or answers an error, the round fails as a whole: the cluster
keeps every node as it was and shows the error (:meth:`Cluster.fail_round`). The queries go
through status_api/engine.py: no redirects, a byte cap, a total timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from status_api.engine import EngineClient, EngineError, EngineSettings, Sample, shown
from status_api.hosts import Host
from status_api.loopthread import LoopThread, gc_paused
from status_api.nodedata import MAX_GPUS, MAX_SHORT_STRING, MAX_STRING, USER_MEMORY
from status_api.nodemetrics import (
    ATTRIBUTION_LABELS,
    MIG_FAMILIES,
    PROCESS_FAMILIES,
    NodeMetrics,
    metrics_from_samples,
)
from status_api.poller import MIB, PollResult

log = logging.getLogger(__name__)

# Families per GPU, with the field of the legacy GPU (or of the power readings) they fill.
_GPU_GAUGES = {
    "gpu_memory_used_bytes": "use_mem",
    "gpu_memory_total_bytes": "tot_mem",
    "gpu_utilization_ratio": "utilize",
    "gpu_temperature_celsius": "temp",
    "gpu_power_watts": "power",
    "gpu_power_limit_watts": "power_limit",
}


def _selector(job: str, family: str) -> str:
    return f"{family}{{job={json.dumps(job)}}}"


def _only(labels: Sequence[str], selector: str) -> str:
    """``selector`` with only ``labels`` kept; a label a series lacks stays absent."""
    return f"max by ({', '.join(labels)}) ({selector})"


# The labels a round reads of each family; the engine drops the rest (max by), which at 2,000
# nodes makes the answers less than half as large, and the engine and the decoding faster.
_GPU_LABELS = ("__name__", "instance", "gpu")
_GPU_INFO_LABELS = (*_GPU_LABELS, "name", "uuid")
_PROCESS_LABELS = ("__name__", "instance", "gpu", "pid", "mig_uuid", "user")
_ATTRIBUTION_LABELS = (*_PROCESS_LABELS, "command", *ATTRIBUTION_LABELS)
_HEALTH_LABELS = ("__name__", "instance", "gpu")
_MIG_LABELS = ("__name__", "instance", "gpu", "mig_uuid", "gi", "ci", "profile")

# What only changes when an operator changes the hardware or renames the node: asked every
# SLOW_SECONDS rather than every round, and at once when a node is up that was not when they
# were last asked. (Memory totals and power limits are not among them: a lost GPU stops
# publishing them, which is how it is seen to have no readings.)
SLOW = frozenset(("node/gpu_node_info", "gpu/gpu_info"))
SLOW_SECONDS = 60.0

# The legacy readings (memory used and total, utilization, temperature): a GPU with none of
# them is lost, and only then does its gpu_up matter (status_api/health.py).
_READINGS = ("gpu_memory_used_bytes", "gpu_memory_total_bytes", "gpu_utilization_ratio",
             "gpu_temperature_celsius")  # fmt: skip


def _health_queries(job: str) -> dict[str, str]:
    """The health families, each only where status_api/health.py can find a problem in it.

    A healthy cluster answers them with (almost) nothing, where a plain query would answer
    eight series per GPU: ``gpu_up`` of GPUs without readings; the row-remap and page-retirement
    flags that are set; the four PCIe link values of GPUs whose link is below its maximum; MIG
    mode and pending mode of GPUs where they differ; XIDs (published only after one). What is
    left out is what health.py would read as no problem, so both modes judge alike.
    """

    def family(name: str) -> str:
        return _selector(job, name)

    def where(name: str, condition: str) -> str:
        return f"{family(name)} and on(instance, gpu) ({condition})"

    readings = "|".join(_READINGS)
    has_readings = (
        f"group by (instance, gpu) ({{__name__=~{json.dumps(readings)},job={json.dumps(job)}}})"
    )
    link = "gpu_pcie_link_"
    below = (
        f"({family(link + 'generation')} < {family(link + 'generation_max')})"
        f" or on(instance, gpu) ({family(link + 'width')} < {family(link + 'width_max')})"
    )
    # Comparisons match a GPU's series on all their labels: one-to-one even where two targets
    # share an address.
    changing = f"{family('gpu_mig_mode')} != {family('gpu_mig_mode_pending')}"
    wanted = {
        "gpu_up": f"{family('gpu_up')} unless on(instance, gpu) {has_readings}",
        "gpu_last_xid": family("gpu_last_xid"),
        "gpu_last_xid_timestamp_seconds": family("gpu_last_xid_timestamp_seconds"),
        **{
            name: where(name, f"{family(name)} != 0")
            for name in (
                "gpu_remapped_rows_pending",
                "gpu_remapped_rows_failure",
                "gpu_retired_pages_pending",
            )
        },
        **{
            link + end: where(link + end, below)
            for end in ("generation", "generation_max", "width", "width_max")
        },
        "gpu_mig_mode": where("gpu_mig_mode", changing),
        "gpu_mig_mode_pending": where("gpu_mig_mode_pending", changing),
    }
    return {f"health/{name}": _only(_HEALTH_LABELS, expr) for name, expr in wanted.items()}


def queries(job: str) -> dict[str, str]:
    """Every instant query of a round, by ``<purpose>/<family>`` (see :func:`merged`).

    One family per query: the engine answers them in parallel, and decoding each answer holds
    the interpreter lock for milliseconds, not half a second, so requests to the page are
    served in between. Only raw exporter series are read, each with the labels it is read for.
    """
    up = f"up{{job={json.dumps(job)}}}"
    wanted = {"up": up, "scraped": f"timestamp({up})"}

    def ask(purpose: str, family: str, labels: Sequence[str]) -> None:
        wanted[f"{purpose}/{family}"] = _only(labels, _selector(job, family))

    ask("node", "gpu_node_info", ("__name__", "instance", "hostname"))
    ask("node", "gpu_exporter_last_collect_timestamp_seconds", ("__name__", "instance"))
    ask("gpu", "gpu_info", _GPU_INFO_LABELS)
    for family in _GPU_GAUGES:
        ask("gpu", family, _GPU_LABELS)
    ask("process", "gpu_process_memory_used_bytes", _PROCESS_LABELS)
    # What polling reads from /metrics beyond the legacy JSON, mapped by nodemetrics.py;
    # gpu_process_info also gives the processes their users and commands.
    ask("attribution", PROCESS_FAMILIES[0], _ATTRIBUTION_LABELS)
    for family in PROCESS_FAMILIES[1:]:
        ask("attribution", family, ("__name__", "instance", "gpu", "pid"))
    wanted.update(_health_queries(job))
    for family in MIG_FAMILIES:
        ask("health", family, _MIG_LABELS)
    return wanted


def merged(answers: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
    """The answers of :func:`queries` by purpose: ``gpu/<family>`` answers joined as ``gpu``."""
    joined: dict[str, list[Sample]] = {}
    for name, samples in answers.items():
        joined.setdefault(name.partition("/")[0], []).extend(samples)
    return joined


class SlowAnswers:
    """The last answers of the :data:`SLOW` queries, and whether to ask them again."""

    def __init__(self, *, every: float = SLOW_SECONDS) -> None:
        self._every = every
        self._answers: dict[str, list[Sample]] = {}
        self._asked_at: float | None = None  # time.monotonic()
        self._up: set[str] = set()  # the instances up when they were asked

    def due(self, now: float) -> bool:
        return self._asked_at is None or now - self._asked_at >= self._every

    def missing(self, up: set[str]) -> bool:
        """Whether a node is up now that was not when the answers were taken."""
        return not up <= self._up

    def remember(self, answers: dict[str, list[Sample]], up: set[str], now: float) -> None:
        self._answers = {name: answers[name] for name in SLOW}
        self._up, self._asked_at = up, now

    def fill(self, answers: dict[str, list[Sample]]) -> None:
        for name, samples in self._answers.items():
            answers.setdefault(name, samples)


def _up_instances(samples: list[Sample]) -> set[str]:
    return {labels.get("instance", "") for labels, value in samples if value == 1}


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
    uuids: dict[int, str] | None = None
    metrics: NodeMetrics | None = None


def _gpu(index: int) -> dict[str, Any]:
    return {"index": index, "name": "", "use_mem": None, "tot_mem": None, "utilize": None,
            "temp": None, "users": []}  # fmt: skip


def _collect_gpus(node: _Node, samples: list[Sample]) -> None:
    gpus: dict[int, dict[str, Any]] = {}
    power: dict[int, dict[str, float]] = {}
    uuids: dict[int, str] = {}
    for labels, value in samples:
        index = _index(labels)
        if index is None or (index not in gpus and len(gpus) >= MAX_GPUS):
            continue
        gpu = gpus.get(index)
        if gpu is None:
            gpu = gpus[index] = _gpu(index)
        family = labels.get("__name__", "")
        if family == "gpu_info":
            gpu["name"] = labels.get("name", "")[:MAX_SHORT_STRING]
            if labels.get("uuid"):
                uuids[index] = labels["uuid"][:MAX_SHORT_STRING]
            continue
        field = _GPU_GAUGES.get(family)
        reading = _legacy_value(field, value) if field else None
        if field in ("power", "power_limit"):
            if reading is not None and reading >= 0:
                power.setdefault(index, {})[field] = reading
        elif field is not None:
            gpu[field] = reading
    node.gpus, node.power, node.uuids = gpus, power, uuids


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
    metrics = node.metrics or NodeMetrics()
    return PollResult(
        node.host, status, "", finished, duration, node.power or {},
        metrics.processes, node.uuids or {}, metrics.health, metrics.migs,
    )  # fmt: skip


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
    process_info = [
        s for s in answers["attribution"] if s[0].get("__name__") == PROCESS_FAMILIES[0]
    ]
    process_samples = _by_instance([*answers["process"], *process_info], nodes)
    extra_samples = _by_instance([*answers["attribution"], *answers["health"]], nodes)
    for instance, node in nodes.items():
        _collect_gpus(node, gpu_samples.get(instance, []))
        _collect_processes(node, process_samples.get(instance, []))
        node.metrics = metrics_from_samples(extra_samples.get(instance, []))
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


async def _round(
    client: EngineClient, *, job: str, stale_after: float, slow: SlowAnswers | None = None
) -> tuple[list[Host], list[PollResult]]:
    """One round; EngineError when any query fails. Without ``slow`` every query is asked."""
    started = time.monotonic()
    at = time.time()
    wanted = queries(job)
    ask_slow = slow is None or slow.due(started)
    asked = {name: expr for name, expr in wanted.items() if ask_slow or name not in SLOW}
    answers = dict(zip(asked, await client.queries(list(asked.values()), at=at)))
    if slow is not None:
        up = _up_instances(answers["up"])
        if not ask_slow and slow.missing(up):
            late = [name for name in wanted if name in SLOW]
            answers.update(zip(late, await client.queries([wanted[n] for n in late], at=at)))
            ask_slow = True
        if ask_slow:
            slow.remember(answers, up, started)
        slow.fill(answers)
    return build_results(
        merged(answers), stale_after=stale_after, duration=time.monotonic() - started
    )


class EngineSource(LoopThread):
    """Asks the engine every ``interval`` seconds in a background thread until :meth:`stop`;
    feeds ``cluster.update`` (or ``cluster.fail_round``)."""

    def __init__(
        self, *, settings: EngineSettings, job: str, interval: float, cluster: Any
    ) -> None:
        self._settings = settings
        self._job = job
        self._interval = interval
        self._cluster = cluster
        self._last_error = ""
        self._slow = SlowAnswers()
        super().__init__(name="engine-source")

    async def _main(self) -> None:
        async with EngineClient(self._settings) as client:
            self._ready()
            while True:
                started = time.monotonic()
                with gc_paused():
                    await self._round(client)
                remaining = self._interval - (time.monotonic() - started)
                if remaining > 0:
                    await asyncio.sleep(remaining)

    async def _round(self, client: EngineClient) -> None:
        started = time.monotonic()
        stale_after = self._cluster.thresholds.stale_after
        try:
            # Each query has the timeout; this bounds the round as a whole (its parsing included).
            hosts, results = await asyncio.wait_for(
                _round(client, job=self._job, stale_after=stale_after, slow=self._slow),
                self._settings.timeout + 1.0,
            )
        except asyncio.CancelledError:
            raise
        except Exception as caught:
            if isinstance(caught, EngineError):
                reason = str(caught)
            elif isinstance(caught, asyncio.TimeoutError):
                reason = f"no answer within the {self._settings.timeout:g} s timeout"
            else:
                log.debug("unexpected error querying the engine", exc_info=True)
                reason = shown(f"query failed: {type(caught).__name__}: {caught}")
            error = f"{self._settings.url}: {reason}"
            if error != self._last_error:
                log.error("query engine: %s; keeping the last state", error)
            self._last_error = error
            self._cluster.fail_round(error, time.monotonic() - started)
            return
        if self._last_error:
            log.info("query engine answers again")
        self._last_error = ""
        self._cluster.update(hosts, results, time.monotonic() - started)
