"""The "Users" row: memory, GPUs and GPU-hours per user, and the processes on GPUs."""

from __future__ import annotations

from .panels import (
    NODE,
    NODE_GPU,
    Panel,
    bar_gauge,
    by_name,
    table,
    target,
    timeseries,
    unknown_user,
)


def user_row() -> list[Panel]:
    node_user = f'{NODE}, user=~"$user"'
    return [
        timeseries(
            "GPU memory per user",
            "Memory held by each user's processes on the selected nodes.",
            [
                target(
                    unknown_user(
                        "sum by (user) "
                        f"(node_user:gpu_process_memory_used_bytes:sum{{{node_user}}})"
                    ),
                    "{{user}}",
                )
            ],
            "bytes",
            minimum=0,
            stack=True,
            width=9,
        ),
        timeseries(
            "GPUs per user",
            "GPUs on which each user's processes hold memory (several processes of one user "
            "on one GPU count once).",
            [
                target(
                    unknown_user(f"sum by (user) (node_user:gpu_count:sum{{{node_user}}})"),
                    "{{user}}",
                )
            ],
            "none",
            minimum=0,
            decimals=0,
            stack=True,
            width=9,
        ),
        bar_gauge(
            "GPU-hours in the selected range",
            "GPU-hours each user used over the dashboard's time range, from the "
            "user:gpu_seconds:total counter (whole cluster, not filtered by node).",
            [
                target(
                    "sort_desc("
                    + unknown_user(
                        'increase(user:gpu_seconds:total{user=~"$user"}[$__range]) / 3600'
                    )
                    + ")",
                    "{{user}}",
                    instant=True,
                )
            ],
            "h",
            width=6,
        ),
        table(
            "Processes on GPUs",
            "Processes holding GPU memory now, largest first. An empty user means the "
            "exporter could not read the owner (another PID namespace). Command lines come "
            "only from exporters that publish them on /metrics (--metrics.command-line, or "
            "basic auth on /metrics); elsewhere the column is empty.",
            [
                target(
                    unknown_user(
                        f'gpu_process_memory_used_bytes{{{NODE_GPU}, user=~"$user"}}'
                        " * on (instance, gpu, uuid, pid) group_left (command)"
                        f" gpu_process_info{{{NODE_GPU}}}"
                    ),
                    instant=True,
                    table=True,
                )
            ],
            "bytes",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "user": "User",
                "pid": "PID",
                "command": "Command",
                "Value": "GPU memory",
            },
            sort_by="Value",
            overrides=[by_name("Command", **{"custom.minWidth": 300})],
            width=24,
        ),
    ]
