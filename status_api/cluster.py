"""What the service knows about each node, and the two JSON views rendered from it once per round.

Each node keeps its last good status, when this machine last got one (``last_seen``, by the
main node's clock: node clocks may be wrong), and the error of its latest poll. Its state:

* ``online``: the latest poll succeeded and is at most ``stale_after`` seconds old;
* ``stale``: the latest poll failed (or is older than ``stale_after``), but a good status arrived
  within ``offline_after`` seconds; the last known GPUs are shown, marked as possibly outdated;
* ``offline``: no good status within ``offline_after`` seconds, or never.

Each GPU of a node with data has one state, free, in use, sick, lost or stale, and may be idle
but held, as :mod:`status_api.vocabulary` defines them; the summary counts each, on nodes with
data (online and stale).

Each GPU has a ``health``: its state (ok, warning, sick, lost) and the reasons, in words, from
the legacy readings and the node's ``/metrics`` (status_api/health.py). The summary counts the
warning, sick and lost GPUs.

The service tracks each GPU's idle-but-held period (``idle_since``, judged by
:func:`~status_api.vocabulary.holds_without_compute`) between polls per node and GPU (by uuid
where ``/metrics`` names it, else by index); a node that leaves hosts.txt is forgotten with
everything else about it. With a state file
(status_api/statefile.py) these periods survive a restart: read at start, handed to the nodes
listed at the first round, written after every round that changed them.

Each GPU lists its MIG devices (``mig``: empty outside MIG mode or when the node does not say)
and each process the MIG device it runs in (``mig_uuid``), from the node's ``/metrics``.

After every round :meth:`Cluster.update` renders the JSON documents to bytes (plain and gzip),
so requests only hand out cached bytes: the cluster, the legacy shape and the use per user,
Slurm job and namespace (:mod:`status_api.usage`).
"""

from __future__ import annotations

import gzip
import json
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from status_api.health import LOST, SICK, WARNING, gpu_health
from status_api.hosts import Host
from status_api.nodedata import USER_MEMORY
from status_api.nodemetrics import ATTRIBUTION_LABELS, GpuHealth, MigDevice, ProcessMetrics
from status_api.poller import PollResult
from status_api.statefile import IdleState, StateFile
from status_api.usage import NO_ENGINE, History, users_document
from status_api.vocabulary import (
    FREE,
    IN_USE,
    Thresholds,
    busy_but_sm_idle,
    gpu_state,
    holds_without_compute,
    is_idle_held,
)

ONLINE, STALE, OFFLINE = "online", "stale", "offline"


__all__ = ["OFFLINE", "ONLINE", "STALE", "Cluster", "NodeState", "Thresholds"]


@dataclass
class NodeState:
    """Everything known about one node; replaced, never shared across threads while mutated."""

    host: Host
    status: dict[str, Any] | None = None
    power: dict[int, dict[str, float]] = field(default_factory=dict)
    processes: dict[tuple[int, int], ProcessMetrics] = field(default_factory=dict)
    uuids: dict[int, str] = field(default_factory=dict)
    health: dict[int, GpuHealth] = field(default_factory=dict)
    migs: dict[int, list[MigDevice]] = field(default_factory=dict)
    # Per GPU (uuid, else "index N"): since when its processes hold memory without computing.
    idle_since: dict[str, float] = field(default_factory=dict)
    last_seen: float | None = None  # wall time of the last good poll, this machine's clock
    last_poll: float | None = None
    last_ok: bool = False
    error: str = ""
    duration: float | None = None
    polls: int = 0
    failures: int = 0

    def record(self, result: PollResult) -> None:
        self.last_poll = result.finished_at
        self.duration = result.duration
        self.polls += 1
        self.last_ok = result.ok
        if result.ok:
            self.status = result.status
            if result.power is not None:
                self.power = result.power
            if result.processes is not None:
                self.processes = result.processes
            if result.uuids is not None:
                self.uuids = result.uuids
            if result.health is not None:
                self.health = result.health
            if result.migs is not None:
                self.migs = result.migs
            self.last_seen = result.finished_at
            self.error = ""
        else:
            self.failures += 1
            self.error = result.error

    def gpu_key(self, index: int) -> str:
        return self.uuids.get(index) or f"index {index}"

    def track_idle(self, now: float, thresholds: Thresholds) -> None:
        """After a good poll: start, keep or end each GPU's idle-but-held period."""
        since: dict[str, float] = {}
        for gpu in (self.status or {}).get("gpus", []):
            key = self.gpu_key(gpu["index"])
            if holds_without_compute(gpu, self.sm_utilization(gpu["index"]), thresholds):
                since[key] = self.idle_since.get(key, now)
        self.idle_since = since  # GPUs held and busy, or gone, are dropped

    def sm_utilization(self, index: int) -> dict[int, float | None] | None:
        """SM utilization by pid of GPU ``index``'s processes; None where the node reports it
        for none of them."""
        found = {
            pid: process.sm_utilization
            for (gpu, pid), process in self.processes.items()
            if gpu == index
        }
        return found if any(value is not None for value in found.values()) else None

    def state(self, now: float, thresholds: Thresholds) -> str:
        if self.last_seen is None or now - self.last_seen > thresholds.offline_after:
            return OFFLINE
        if self.last_ok and now - self.last_seen <= thresholds.stale_after:
            return ONLINE
        return STALE


@dataclass
class Summary:
    nodes_total: int = 0
    nodes_online: int = 0
    nodes_stale: int = 0
    nodes_offline: int = 0
    gpus_total: int = 0
    gpus_in_use: int = 0
    gpus_idle_held: int = 0
    gpus_free: int = 0
    gpus_stale: int = 0
    gpus_warning: int = 0
    gpus_sick: int = 0
    gpus_lost: int = 0
    memory_used_mib: int = 0
    memory_total_mib: int = 0


# ASCII output: hostile text from nodes travels as \u escapes, whatever its bytes were.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def _encode(document: Any) -> bytes:
    return _ENCODER.encode(document).encode("ascii")


def _with_list(head: dict[str, Any], key: str, items: list[Any]) -> bytes:
    """``head`` plus ``key: items``, encoding the items one by one.

    Encoding a 1000-node document in one call would hold the GIL for tens of milliseconds and
    stall the threads answering requests; one node at a time lets them in between.
    """
    opening = _encode(head)[:-1] + (b"," if head else b"") + _encode(key) + b":["
    return opening + b",".join([_encode(item) for item in items]) + b"]}"


@dataclass(frozen=True)
class View:
    """One rendered document: plain and gzip bytes, and its (unquoted) ETag."""

    body: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes, tag: str) -> View:
        return cls(body, gzip.compress(body, compresslevel=1, mtime=0), tag)


@dataclass
class Views:
    cluster: View
    legacy: View
    users: View
    sequence: int
    generated_at: float
    nodes: list[tuple[NodeState, str]] = field(default_factory=list)
    # The users of /api/v1/users (holding GPUs now, or with GPU-hours recorded in its longest
    # window): whose history is worth asking the engine for.
    user_names: frozenset[str] = frozenset()


_NO_POWER = {"power": None, "power_limit": None, "sm_active": None}


def _cluster_users(
    users: list[dict[str, Any]], index: int, processes: dict[tuple[int, int], ProcessMetrics]
) -> list[dict[str, Any]]:
    """The processes as /api/v1/cluster documents them: memory is ``mem`` there, not the legacy
    ``mem(MiB)`` (the two views keep their own published schemas), plus the attribution, MIG
    device and SM utilization that the node's ``/metrics`` gave (empty strings and null when it
    did not)."""
    documents = []
    for user in users:
        process = processes.get((index, user["pid"])) or _NO_PROCESS
        documents.append(
            {
                "pid": user["pid"],
                "username": user["username"],
                "mem": user[USER_MEMORY],
                "command": user["command"],
                **{name: getattr(process, name) for name in ATTRIBUTION_LABELS},
                "mig_uuid": process.mig_uuid,
                "sm_utilization": process.sm_utilization,
            }
        )
    return documents


_NO_PROCESS = ProcessMetrics()


def _idle_held(node: NodeState, index: int, thresholds: Thresholds) -> tuple[bool, float | None]:
    """Judged as of the node's last good poll: what happened since is not known yet."""
    since = node.idle_since.get(node.gpu_key(index))
    if node.last_seen is None or not is_idle_held(
        since, as_of=node.last_seen, thresholds=thresholds
    ):
        return False, None
    return True, None if since is None else round(since, 3)


def _node_document(node: NodeState, state: str, now: float, thresholds: Thresholds) -> dict:
    status = node.status or {}
    online = state == ONLINE
    gpus = []
    for gpu in status.get("gpus", []):
        idle_held, idle_held_since = _idle_held(node, gpu["index"], thresholds)
        health = gpu_health(
            gpu,
            node.health.get(gpu["index"]),
            now=now,
            xid_recent=thresholds.xid_recent,
            busy_above=thresholds.free_utilization,
        )
        use = gpu_state(gpu, node_online=online, health=health.state, thresholds=thresholds)
        readings = {**_NO_POWER, **node.power.get(gpu["index"], {})}
        gpus.append(
            {
                **gpu,
                "users": _cluster_users(gpu["users"], gpu["index"], node.processes),
                **readings,
                "sm_idle": use == IN_USE
                and busy_but_sm_idle(gpu.get("utilize"), readings["sm_active"]),
                "state": use,
                "free": use == FREE,
                "idle_held": idle_held and use == IN_USE,
                "idle_held_since": idle_held_since if use == IN_USE else None,
                "health": health.document(),
                "mig": [device.document() for device in node.migs.get(gpu["index"], [])],
            }
        )
    return {
        "node": node.host.text,
        "address": node.host.netloc,
        "state": state,
        "last_seen": None if node.last_seen is None else round(node.last_seen, 3),
        "error": node.error,
        "poll_seconds": None if node.duration is None else round(node.duration, 4),
        "hostname": status.get("hostname", node.host.text),
        "last_update": status.get("last_update"),
        "ips": status.get("ips", []),
        "gpus": gpus,
    }


def _summarise(documents: list[dict[str, Any]]) -> Summary:
    summary = Summary(nodes_total=len(documents))
    for node in documents:
        state = node["state"]
        if state == OFFLINE:
            summary.nodes_offline += 1
            continue
        if state == ONLINE:
            summary.nodes_online += 1
        else:
            summary.nodes_stale += 1
        for gpu in node["gpus"]:
            summary.gpus_total += 1
            use = gpu["state"]
            summary.gpus_free += use == FREE
            summary.gpus_in_use += use == IN_USE
            summary.gpus_idle_held += gpu["idle_held"]
            summary.gpus_sick += use == SICK
            summary.gpus_lost += use == LOST
            summary.gpus_stale += state == STALE
            summary.gpus_warning += gpu["health"]["state"] == WARNING
            summary.memory_used_mib += gpu["use_mem"] or 0
            summary.memory_total_mib += gpu["tot_mem"] or 0
    return summary


def _legacy_node(node: NodeState, state: str) -> dict[str, Any]:
    """A node in the old api.py shape: its /get-status JSON (users with ``mem(MiB)``, as checked
    by nodedata) plus ``status`` and ``version``."""
    if node.status is None:
        return {"hostname": node.host.text, "status": False, "gpus": []}
    gpus = node.status["gpus"]
    return {
        **node.status,
        "status": state == ONLINE,
        "version": gpus[0]["name"] if gpus else "",
    }


class Cluster:
    """The node states in hosts.txt order and the views rendered from them."""

    def __init__(
        self,
        *,
        thresholds: Thresholds | None = None,
        interval: float = 3.0,
        usage_history: Callable[[], History] | None = None,
        state_file: StateFile | None = None,
    ) -> None:
        self.thresholds = thresholds or Thresholds()
        self._state_file = state_file
        # Idle-held periods from the state file, until the first round says which nodes exist.
        self._restored: IdleState = state_file.load() if state_file is not None else {}
        self.interval = interval
        # The latest GPU-hours from the query engine, read at every render; none without one.
        self._usage_history = usage_history or (lambda: NO_ENGINE)
        self._nodes: dict[tuple[str, int], NodeState] = {}
        self._order: list[tuple[str, int]] = []
        self._lock = threading.Lock()  # serialises updates; readers only read ``self.views``
        self.rounds = 0
        # Part of every ETag, so a restarted service never matches a browser's cached copy.
        self._instance = secrets.token_hex(4)
        self.last_round_seconds: float | None = None
        # Why the latest round got no data at all (the query engine is down); "" otherwise.
        self.error = ""
        self.views = self._render(time.time())

    def set_hosts(self, hosts: Sequence[Host]) -> None:
        """Follow a new hosts.txt: keep the state of nodes still listed, drop the others."""
        nodes: dict[tuple[str, int], NodeState] = {}
        for host in hosts:
            state = self._nodes.get(host.key)
            if state is None:
                state = NodeState(host, idle_since=self._restored.pop(host.key, {}))
            else:
                state.host = host  # the line number or spelling may have changed
            nodes[host.key] = state
        self._nodes = nodes
        self._order = [host.key for host in hosts]

    def update(
        self,
        hosts: Sequence[Host],
        results: Sequence[PollResult],
        round_seconds: float | None = None,
    ) -> None:
        """Record one round's results and re-render the views."""
        with self._lock:
            self.set_hosts(hosts)
            for result in results:
                node = self._nodes.get(result.host.key)
                if node is not None:
                    node.record(result)
                    if result.ok:
                        node.track_idle(result.finished_at, self.thresholds)
            self.rounds += 1
            self.last_round_seconds = round_seconds
            self.error = ""
            self.views = self._render(time.time())
            self._restored = {}  # saved periods of nodes no longer listed are dropped
            if self._state_file is not None:
                self._state_file.save(self.idle_state())

    def idle_state(self) -> IdleState:
        """Since when each node's idle-held GPUs have been so: what the state file keeps."""
        return {key: dict(node.idle_since) for key, node in self._nodes.items() if node.idle_since}

    @property
    def state_file(self) -> StateFile | None:
        return self._state_file

    def fail_round(self, error: str, round_seconds: float | None = None) -> None:
        """A round that got nothing (the query engine is down): keep every node as it was,
        show ``error`` at cluster level, and re-render (states still age)."""
        with self._lock:
            self.rounds += 1
            self.last_round_seconds = round_seconds
            self.error = error
            self.views = self._render(time.time())

    @property
    def ready(self) -> bool:
        return self.rounds > 0

    def _render(self, now: float) -> Views:
        nodes = [self._nodes[key] for key in self._order]
        states = [(node, node.state(now, self.thresholds)) for node in nodes]
        documents = [_node_document(node, state, now, self.thresholds) for node, state in states]
        head = {
            "generated_at": round(now, 3),
            "interval": self.interval,
            "thresholds": {
                "stale_after": self.thresholds.stale_after,
                "offline_after": self.thresholds.offline_after,
                "free_memory_mib": self.thresholds.free_memory_mib,
                "free_utilization": self.thresholds.free_utilization,
                "idle_held_after": self.thresholds.idle_held_after,
                "xid_recent": self.thresholds.xid_recent,
            },
            "summary": vars(_summarise(documents)),
            "error": self.error,
        }
        legacy = [_legacy_node(node, state) for node, state in states]
        users = users_document(
            documents, self._usage_history(), generated_at=now, interval=self.interval
        )
        sequence = self.rounds
        tag = f"{self._instance}-{sequence}"
        return Views(
            cluster=View.of(_with_list(head, "nodes", documents), tag),
            legacy=View.of(_with_list({}, "Nodes", legacy), tag),
            users=View.of(_encode(users), tag),
            sequence=sequence,
            generated_at=now,
            nodes=[(_copy(node), state) for node, state in states],
            user_names=frozenset(entry["user"] for entry in users["users"]),
        )


def _copy(node: NodeState) -> NodeState:
    """A frozen-in-time copy for readers in other threads (the metrics collector)."""
    return NodeState(
        host=node.host,
        status=None,  # readers of the copy need the bookkeeping, not the GPUs
        last_seen=node.last_seen,
        last_poll=node.last_poll,
        last_ok=node.last_ok,
        error=node.error,
        duration=node.duration,
        polls=node.polls,
        failures=node.failures,
    )
