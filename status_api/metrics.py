"""The status service's own ``/metrics``: how reading the nodes goes.

A node is *read* by polling its exporter or, with ``--prometheus-url``, from its series in a round
of queries; the metric names say "poll" for both. Per node (label ``node``: the entry as written
in hosts.txt, or the target's ``node`` label) the latest read's success and duration, the time of
the last good read, read and failure counters and the node's state; for the service, the rounds
and their duration, and the writes and failed writes of the state file when there is one.
Families are built fresh on every scrape from the views of the latest round, in a registry of
its own (plus the standard process metrics).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from status_api import __version__
from status_api.cluster import OFFLINE, ONLINE, STALE, Cluster


class ClusterCollector(Collector):
    """Renders the poll bookkeeping of the latest round."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def collect(self) -> Iterator[Metric]:
        views = self._cluster.views
        labels = ["node"]
        success = GaugeMetricFamily(
            "gpu_status_api_node_poll_success",
            "Whether the latest read of the node succeeded.",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "gpu_status_api_node_poll_duration_seconds",
            "How long the latest read of the node took.",
            labels=labels,
        )
        last_success = GaugeMetricFamily(
            "gpu_status_api_node_last_success_timestamp_seconds",
            "When the node was last read correctly (this machine's clock).",
            labels=labels,
        )
        polls = CounterMetricFamily(
            "gpu_status_api_node_polls_total",
            "Reads of the node since the service started.",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "gpu_status_api_node_poll_failures_total",
            "Failed reads of the node since the service started.",
            labels=labels,
        )
        state = GaugeMetricFamily(
            "gpu_status_api_node_state",
            "1 for the node's current state (online, stale or offline).",
            labels=["node", "state"],
        )
        counts = {ONLINE: 0, STALE: 0, OFFLINE: 0}
        for node, node_state in views.nodes:
            name = [node.host.text]
            counts[node_state] += 1
            if node.last_poll is not None:
                success.add_metric(name, 1.0 if node.last_ok else 0.0)
                duration.add_metric(name, node.duration or 0.0)
            if node.last_seen is not None:
                last_success.add_metric(name, node.last_seen)
            polls.add_metric(name, node.polls)
            failures.add_metric(name, node.failures)
            for candidate in (ONLINE, STALE, OFFLINE):
                state.add_metric([*name, candidate], 1.0 if candidate == node_state else 0.0)
        yield from (success, duration, last_success, polls, failures, state)
        yield from self._service(counts)

    def _service(self, counts: dict[str, int]) -> Iterator[Metric]:
        nodes = GaugeMetricFamily(
            "gpu_status_api_nodes",
            "Nodes (of hosts.txt, or the query engine's targets) by state.",
            labels=["state"],
        )
        for name, count in counts.items():
            nodes.add_metric([name], count)
        yield nodes
        yield CounterMetricFamily(
            "gpu_status_api_rounds_total",
            "Rounds completed: every node polled, or the query engine asked.",
            value=self._cluster.rounds,
        )
        if self._cluster.last_round_seconds is not None:
            yield GaugeMetricFamily(
                "gpu_status_api_round_duration_seconds",
                "How long the latest round took.",
                value=self._cluster.last_round_seconds,
            )
        if self._cluster.ready:
            yield GaugeMetricFamily(
                "gpu_status_api_last_round_timestamp_seconds",
                "When the latest round finished.",
                value=self._cluster.views.generated_at,
            )
        yield from self._state_file()
        info = GaugeMetricFamily(
            "gpu_status_api_build_info", "Version of gpu-status-api.", labels=["version"]
        )
        info.add_metric([__version__], 1.0)
        yield info

    def _state_file(self) -> Iterator[Metric]:
        state_file = self._cluster.state_file
        if state_file is None:
            return
        yield CounterMetricFamily(
            "gpu_status_api_state_file_writes_total",
            "Times the state file (--state-file) was written.",
            value=state_file.writes,
        )
        yield CounterMetricFamily(
            "gpu_status_api_state_file_write_failures_total",
            "Failed writes of the state file (full disk, read-only directory).",
            value=state_file.failures,
        )


def make_registry(cluster: Cluster) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(cluster))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, *, openmetrics: bool) -> bytes:
    """The registry in the format :func:`servicekit.metricsformat.negotiate` chose."""
    return generate_openmetrics(registry) if openmetrics else generate_latest(registry)
