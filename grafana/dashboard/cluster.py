"""The "Cluster overview" row: one stat per figure of the whole selection."""

from __future__ import annotations

from .panels import (
    NODE,
    Panel,
    by_name,
    stat,
    target,
    thresholds,
)


def cluster_row() -> list[Panel]:
    return [
        stat(
            "Nodes",
            "GPU nodes whose exporter Prometheus scrapes (job gpu): up, and down (red when any "
            "is). A down node's GPUs are not counted anywhere else on this dashboard.",
            [
                target(f'sum(up{{job="gpu", {NODE}}})', "up"),
                target(f'count(up{{job="gpu", {NODE}}} == 0) or vector(0)', "down", ref="B"),
            ],
            "none",
            overrides=[by_name("down", thresholds=thresholds((None, "green"), (1, "red")))],
            decimals=0,
            width=3,
        ),
        stat(
            "GPUs in use",
            "GPUs in use as the status page counts them: neither free, sick nor lost (a process "
            "holds memory, or memory or utilization above the free thresholds); see the "
            'README\'s "What the words mean".',
            [target(f"sum(node:gpu_in_use:sum{{{NODE}}})", "in use")],
            "none",
            steps=thresholds((None, "blue")),
            decimals=0,
            width=3,
        ),
        stat(
            "GPUs free",
            "GPUs free as the status page counts them: no process, memory and utilization under "
            "the thresholds of rules/thresholds.yml, neither sick nor lost, on an online node; "
            "orange when none is free.",
            [target(f"sum(node:gpu_free:sum{{{NODE}}})", "free")],
            "none",
            steps=thresholds((None, "orange"), (1, "green")),
            decimals=0,
            width=3,
        ),
        stat(
            "GPU memory",
            "Device memory in use and installed, summed over the selected nodes.",
            [
                target(f"sum(node:gpu_memory_used_bytes:sum{{{NODE}}})", "used"),
                target(f"sum(node:gpu_memory_total_bytes:sum{{{NODE}}})", "installed", ref="B"),
            ],
            "bytes",
            steps=thresholds((None, "blue")),
            width=3,
        ),
        stat(
            "Mean GPU utilization",
            "Share of time a kernel ran, averaged over every GPU of the selected nodes.",
            [target(f"avg(gpu_utilization_ratio{{{NODE}}})", "utilization")],
            "percentunit",
            steps=thresholds((None, "blue")),
            width=3,
        ),
        stat(
            "GPU power",
            "Power drawn by all GPUs of the selected nodes.",
            [target(f"sum(node:gpu_power_watts:sum{{{NODE}}})", "power")],
            "watt",
            steps=thresholds((None, "blue")),
            width=3,
        ),
        stat(
            "Active users",
            "Users whose processes hold memory on some GPU of the selected nodes.",
            [
                target(
                    f"count(sum by (user) (node_user:gpu_count:sum{{{NODE}}})) or vector(0)",
                    "users",
                )
            ],
            "none",
            steps=thresholds((None, "blue")),
            decimals=0,
            width=3,
        ),
        stat(
            "Alerts firing",
            "GPU alerts (Gpu*) firing now for the selected nodes; see Prometheus' alerts page "
            "or Alertmanager for the list.",
            [
                target(
                    f'count(ALERTS{{alertstate="firing", alertname=~"Gpu.+", {NODE}}}) '
                    "or vector(0)",
                    "firing",
                )
            ],
            "none",
            steps=thresholds((None, "green"), (1, "red")),
            decimals=0,
            width=3,
        ),
    ]
