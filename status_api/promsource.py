"""The cluster from a Prometheus-compatible query engine instead of polling the nodes.

With ``--prometheus-url`` the service asks Prometheus (or VictoriaMetrics, or anything that answers
``/api/v1/query``) every ``interval`` seconds one instant query per family, all at the same
evaluation time (what polling reads from ``/metrics`` only every ``--power-interval``, and what
changes with the hardware every minute: :class:`Cadence`), and turns the answers into the same
per-node :class:`PollResult` objects the poller makes, so the page, ``/api/v1/cluster`` and the
legacy ``/get-status`` are identical in shape, the per-process attribution, GPU health and MIG
devices that polling reads from ``/metrics`` included (mapped by status_api/nodemetrics.py). The
scrape targets are the truth: a node is a target of the job (``--prometheus-job``), named by its
``node`` label (what ``gpu-status-api targets`` writes), else its ``instance``.

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
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from status_api.engine import EngineClient, EngineError, EngineSettings, Sample, shown
from status_api.hosts import Host
from status_api.loopthread import LoopThread, gc_paused
from status_api.nodedata import MAX_GPUS, MAX_SHORT_STRING, MAX_STRING, USER_MEMORY
from status_api.nodemetrics import (
    ATTRIBUTION_LABELS,
    MAX_PROCESSES,
    MIG_FAMILIES,
    PROCESS_FAMILIES,
    NodeMetrics,
    metrics_by_instance,
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
    "gpu_sm_active_ratio": "sm_active",
}
# The fields read with power, every --power-interval, rather than into the legacy GPU.
_READINGS = ("power", "power_limit", "sm_active")


def _selector(job: str, family: str) -> str:
    return f"{family}{{job={json.dumps(job)}}}"


def _matching(job: str, pattern: str) -> str:
    """A selector of every family whose name matches ``pattern``, in ``job``."""
    return f"{{__name__=~{json.dumps(pattern)},job={json.dumps(job)}}}"


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


def _health_queries(job: str) -> dict[str, str]:
    """The health families, where status_api/health.py can find a problem in them.

    A healthy cluster answers most with nothing, where plain queries would answer eight series
    per GPU: ``gpu_up`` of GPUs without a memory reading (it only matters for a GPU without
    any reading, which is lost); the row-remap and page-retirement flags that are set; MIG mode
    and pending mode of GPUs where they differ; XIDs (published only after one). The current
    PCIe generation and width come for every GPU (their maxima are :data:`SLOW`): asking the
    engine to compare them with their maxima would cost it more than sending them. What is left
    out is what health.py reads as no problem, so both modes judge alike.
    """
    flags = "gpu_remapped_rows_pending|gpu_remapped_rows_failure|gpu_retired_pages_pending"
    modes = "gpu_mig_mode|gpu_mig_mode_pending"
    selected = {
        "gpu_up": f"{_selector(job, 'gpu_up')} unless on(instance, gpu) "
        f"{_selector(job, 'gpu_memory_used_bytes')}",
        "memory_flags": f"{_matching(job, flags)} > 0",
        "mig_modes": f"{_matching(job, modes)} and on(instance, gpu) "
        f"({_selector(job, 'gpu_mig_mode')} != {_selector(job, 'gpu_mig_mode_pending')})",
        **{name: _selector(job, name) for name in (
            "gpu_last_xid", "gpu_last_xid_timestamp_seconds", "gpu_pcie_link_generation",
            "gpu_pcie_link_width", "gpu_pcie_link_generation_max", "gpu_pcie_link_width_max",
        )},
    }  # fmt: skip
    return {f"health/{name}": _only(_HEALTH_LABELS, expr) for name, expr in selected.items()}


def queries(job: str) -> dict[str, str]:
    """Every instant query of a round, by ``<purpose>/<name>`` (see :func:`merged`).

    One family per query, mostly: the engine answers them in parallel, and decoding each answer
    holds the interpreter lock for milliseconds, not half a second, so requests to the page are
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


# What only changes when an operator changes the hardware or renames the node.
SLOW = frozenset((
    "node/gpu_node_info", "gpu/gpu_info", "health/gpu_pcie_link_generation_max",
    "health/gpu_pcie_link_width_max",
))  # fmt: skip
SLOW_SECONDS = 60.0
# What polling reads from a node's /metrics every --power-interval seconds rather than every
# round: power, SM utilization, health, MIG devices. (Process info gives the users too: it is
# read every round, as the legacy JSON is when polling; gpu_up too, so a lost GPU shows as lost
# at once.)
METRICS = frozenset(
    name
    for name in queries("")
    if (name.startswith("health/") and name != "health/gpu_up") or name in (
        "gpu/gpu_power_watts", "gpu/gpu_power_limit_watts", "gpu/gpu_sm_active_ratio",
        "attribution/gpu_process_sm_utilization_ratio",
    )
) - SLOW  # fmt: skip


def merged(answers: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
    """The answers of :func:`queries` by purpose: ``gpu/<family>`` answers joined as ``gpu``."""
    joined: dict[str, list[Sample]] = {}
    for name, samples in answers.items():
        joined.setdefault(name.partition("/")[0], []).extend(samples)
    return joined


@dataclass
class _Tier:
    names: frozenset[str]
    every: float
    answers: dict[str, list[Sample]] = field(default_factory=dict)
    asked_at: float | None = None  # time.monotonic()
    up: set[str] = field(default_factory=set)  # the instances up when they were asked


class Cadence:
    """Which queries a round asks: :data:`SLOW` every ``slow_every`` seconds, :data:`METRICS`
    every ``metrics_every`` (0: every round; negative: never), the others every round.

    A tier is asked at once, in a second call of the same round, when a node is up that was not
    when it was last asked: a new node never shows without its GPU names or health. Between
    times a round reuses the tier's last answers.
    """

    def __init__(self, *, metrics_every: float = 10.0, slow_every: float = SLOW_SECONDS) -> None:
        self._tiers = [_Tier(SLOW, slow_every)]
        self.reused = ReusedReadings()
        self._never: frozenset[str] = frozenset()
        if metrics_every >= 0:
            self._tiers.append(_Tier(METRICS, metrics_every))
        else:
            self._never = METRICS

    def due(self, now: float) -> frozenset[str]:
        """The names a round at ``now`` leaves out (the tiers not due, and the never asked)."""
        kept = [
            tier.names
            for tier in self._tiers
            if tier.asked_at is not None and now - tier.asked_at < tier.every
        ]
        return self._never.union(*kept)

    def late(self, skipped: frozenset[str], up: set[str]) -> frozenset[str]:
        """Of ``skipped``, the tiers that do not know a node that is ``up`` now."""
        return frozenset().union(
            *(tier.names for tier in self._tiers if tier.names <= skipped and not up <= tier.up)
        )

    def remember(self, answers: dict[str, list[Sample]], up: set[str], now: float) -> None:
        """Keep the tiers ``answers`` holds; fill in those it does not."""
        for tier in self._tiers:
            if tier.names <= answers.keys():
                tier.answers = {name: answers[name] for name in tier.names}
                tier.asked_at, tier.up = now, up
            else:
                for name, samples in tier.answers.items():
                    answers.setdefault(name, samples)
        for name in self._never:
            answers.setdefault(name, [])


def _up_instances(samples: list[Sample]) -> set[str]:
    return {labels.get("instance", "") for labels, value in samples if value == 1}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _mib(value: float | None) -> int | None:
    value = _finite(value)
    return None if value is None or value < 0 else int(value) // MIB


# A finite gauge in the legacy JSON's unit, rounded as the exporter rounds its own JSON; by field.
_LEGACY: dict[str, Callable[[float], int | float | None]] = {
    "use_mem": _mib,
    "tot_mem": _mib,
    "utilize": lambda value: round(value * 100),
    "temp": round,
    "power": lambda value: round(value, 1),  # W, as the poller reads it from /metrics
    "power_limit": lambda value: round(value, 1),
    "sm_active": lambda value: round(value, 3),  # 0..1, as the poller reads it from /metrics
}


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


# GPU index labels as the exporter writes them, looked up: every per-GPU sample has one.
_INDEXES = {str(index): index for index in range(MAX_GPUS)}


def _index(labels: dict[str, str]) -> int | None:
    text = labels.get("gpu", "")
    index = _INDEXES.get(text)
    if index is None and text.isdigit() and len(text) <= 6:
        return int(text)
    return index


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


def _collect_gpus(nodes: dict[str, _Node], samples: list[Sample]) -> None:
    """GPUs, power and uuids of every node, in one pass over every per-GPU answer (the hot loop
    of a round: one sample per GPU and family)."""
    gauges, legacy, indexes = _GPU_GAUGES, _LEGACY, _INDEXES
    for labels, value in samples:
        node = nodes.get(labels.get("instance", ""))
        if node is None:
            continue
        gpus = node.gpus
        assert gpus is not None and node.power is not None and node.uuids is not None
        index = indexes.get(labels.get("gpu", ""))
        if index is None:
            index = _index(labels)
            if index is None:
                continue
        gpu = gpus.get(index)
        if gpu is None:
            if len(gpus) >= MAX_GPUS:
                continue
            gpu = gpus[index] = _gpu(index)
        family = labels.get("__name__", "")
        field = gauges.get(family)
        if field is not None:
            reading = legacy[field](value) if math.isfinite(value) else None
            if field in _READINGS:
                if reading is not None and reading >= 0:
                    node.power.setdefault(index, {})[field] = reading
            else:
                gpu[field] = reading
        elif family == "gpu_info":
            gpu["name"] = labels.get("name", "")[:MAX_SHORT_STRING]
            if labels.get("uuid"):
                node.uuids[index] = labels["uuid"][:MAX_SHORT_STRING]


def _collect_processes(nodes: dict[str, _Node], samples: list[Sample]) -> None:
    """Users per GPU: a process is its (gpu, pid, mig_uuid); memory and command joined on it."""
    users: dict[str, dict[tuple[int, int, str], dict[str, Any]]] = {}
    for labels, value in samples:
        instance = labels.get("instance", "")
        node = nodes.get(instance)
        if node is None:
            continue
        index, pid = _index(labels), labels.get("pid", "")
        if index is None or node.gpus is None or index not in node.gpus or not pid.isdigit():
            continue
        key = (index, int(pid), labels.get("mig_uuid", ""))
        found = users.get(instance)
        if found is None:
            found = users[instance] = {}
        user = found.get(key)
        if user is None:
            user = found[key] = {
                "pid": int(pid), "username": labels.get("user", "")[:MAX_SHORT_STRING],
                USER_MEMORY: None, "command": "",
            }  # fmt: skip
        if labels.get("__name__") == "gpu_process_memory_used_bytes":
            user[USER_MEMORY] = _mib(value)
        elif "command" in labels:
            user["command"] = labels["command"][:MAX_STRING]
    for instance, found in users.items():
        gpus = nodes[instance].gpus
        assert gpus is not None
        for (index, _, _), user in sorted(found.items()):
            gpus[index]["users"].append(user)


def _by_instance(samples: list[Sample], nodes: dict[str, _Node]) -> dict[str, list[Sample]]:
    grouped: dict[str, list[Sample]] = {}
    for sample in samples:
        instance = sample[0].get("instance", "")
        if instance in nodes:
            found = grouped.get(instance)
            if found is None:
                grouped[instance] = [sample]
            else:
                found.append(sample)
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


# The attribution and health families asked every round; the others come from tiers a round
# mostly reuses (Cadence), so what is read from them is kept while their answers are the same.
_EVERY_ROUND_EXTRAS = frozenset((PROCESS_FAMILIES[0], "gpu_up"))


@dataclass
class ReusedReadings:
    """What the last round read from the answers it reused (attribution and health families
    asked every ``--power-interval`` or minute): read again only when the answers change."""

    samples: list[Sample] = field(default_factory=list)
    instances: set[str] = field(default_factory=set)
    metrics: dict[str, NodeMetrics] = field(default_factory=dict)

    def read(self, samples: list[Sample], nodes: dict[str, _Node]) -> dict[str, NodeMetrics]:
        # The same sample objects, not equal ones: a reused answer is the very list kept by
        # Cadence, and comparing identities costs microseconds where reading costs a tenth
        # of a second at 2,000 nodes.
        same = len(samples) == len(self.samples) and all(
            a is b for a, b in zip(samples, self.samples)
        )
        if not same or self.instances != nodes.keys():
            self.samples, self.instances = samples, set(nodes)
            self.metrics = metrics_by_instance(samples, nodes)
        return self.metrics


def _joined(fresh: NodeMetrics | None, kept: NodeMetrics | None) -> NodeMetrics:
    """One node's readings of this round's answers and of the reused ones, as one reader of
    both (this round's first) would have made them; ``kept``'s objects are shared, not changed."""
    if kept is None:
        return fresh or NodeMetrics()
    joined = fresh or NodeMetrics()
    processes, health = joined.processes, joined.health
    for key, process in kept.processes.items():  # SM utilization only
        found = processes.get(key)
        if found is not None:
            found.sm_utilization = process.sm_utilization
        elif len(processes) < MAX_PROCESSES:
            processes[key] = dataclasses.replace(process)
    for gpu, reading in kept.health.items():
        mine = health.get(gpu)
        if mine is not None:  # gpu_up, read this round
            health[gpu] = dataclasses.replace(reading, up=mine.up)
        elif len(health) < MAX_GPUS:
            health[gpu] = reading
    joined.migs = dict(kept.migs)
    return joined


def _extras(
    answers: dict[str, list[Sample]], nodes: dict[str, _Node], reused: ReusedReadings | None
) -> dict[str, NodeMetrics]:
    """Attribution, health and MIG devices per node."""
    samples = [*answers["attribution"], *answers["health"]]
    if reused is None:
        return metrics_by_instance(samples, nodes)
    fresh: list[Sample] = []
    kept: list[Sample] = []
    for sample in samples:
        (fresh if sample[0].get("__name__") in _EVERY_ROUND_EXTRAS else kept).append(sample)
    now, before = metrics_by_instance(fresh, nodes), reused.read(kept, nodes)
    return {
        instance: _joined(now.get(instance), before.get(instance))
        for instance in nodes
        if instance in now or instance in before
    }


def build_results(
    answers: dict[str, list[Sample]],
    *,
    stale_after: float,
    duration: float = 0.0,
    reused: ReusedReadings | None = None,
) -> tuple[list[Host], list[PollResult]]:
    """The targets (ordered by node name) and their results from one round's answers; with
    ``reused``, what was read from answers the last round reused is not read again."""
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
    for node in nodes.values():
        node.gpus, node.power, node.uuids = {}, {}, {}
    _collect_gpus(nodes, answers["gpu"])
    process_info = [
        s for s in answers["attribution"] if s[0].get("__name__") == PROCESS_FAMILIES[0]
    ]
    _collect_processes(nodes, [*answers["process"], *process_info])
    for instance, metrics in _extras(answers, nodes, reused).items():
        nodes[instance].metrics = metrics
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
    client: EngineClient, *, job: str, stale_after: float, cadence: Cadence | None = None
) -> tuple[list[Host], list[PollResult]]:
    """One round; EngineError when any query fails. Without ``cadence`` every query is asked."""
    started = time.monotonic()
    at = time.time()
    wanted = queries(job)
    skipped = cadence.due(started) if cadence is not None else frozenset()
    asked = [name for name in wanted if name not in skipped]
    answers = dict(zip(asked, await client.queries([wanted[n] for n in asked], at=at)))
    if cadence is not None:
        up = _up_instances(answers["up"])
        late = [name for name in wanted if name in cadence.late(skipped, up)]
        if late:
            answers.update(zip(late, await client.queries([wanted[n] for n in late], at=at)))
        cadence.remember(answers, up, started)
    return build_results(
        merged(answers),
        stale_after=stale_after,
        duration=time.monotonic() - started,
        reused=cadence.reused if cadence is not None else None,
    )


class EngineSource(LoopThread):
    """Asks the engine every ``interval`` seconds in a background thread until :meth:`stop`;
    feeds ``cluster.update`` (or ``cluster.fail_round``)."""

    def __init__(
        self,
        *,
        settings: EngineSettings,
        job: str,
        interval: float,
        cluster: Any,
        metrics_every: float = 10.0,
    ) -> None:
        self._settings = settings
        self._job = job
        self._interval = interval
        self._cluster = cluster
        self._last_error = ""
        self._cadence = Cadence(metrics_every=metrics_every)
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
                _round(client, job=self._job, stale_after=stale_after, cadence=self._cadence),
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
