"""Build the GPU cluster dashboard: the provisioned JSON and the copy for manual import.

``python grafana/build_dashboard.py`` rewrites ``grafana/dashboards/gpu-cluster.json`` (what
provisioning loads: fixed datasource uid, no ``__inputs``) and ``grafana/gpu-cluster-import.json``
(the same dashboard with ``__inputs``, for Dashboards > New > Import). The import copy is always
derived from the provisioned one by ``import_copy``, so the two cannot drift;
``--check`` exits 1 when a committed file differs from what this script builds.

Panels read the raw exporter metrics and the recording rules of ``prometheus/rules``.
Thresholds drawn on panels are the alert thresholds of ``prometheus/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROVISIONED = HERE / "dashboards" / "gpu-cluster.json"
IMPORT_COPY = HERE / "gpu-cluster-import.json"

UID = "gpu-cluster"
DATASOURCE_UID = "gpu-prometheus"
DATASOURCE_NAME = "Prometheus (GPU cluster)"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
IMPORT_INPUT = "DS_PROMETHEUS"

# Alert thresholds (prometheus/rules/alerts.yml), drawn on the matching panels.
IDLE_RATIO = 0.05  # GpuIdleButHeld: a GPU below 5% utilization counts as idle
HOT_CELSIUS = 85
MEMORY_FULL_RATIO = 0.95
STALE_SECONDS = 60

NODE = 'node=~"$node"'
NODE_GPU = 'node=~"$node", gpu=~"$gpu"'
GPU_LEGEND = "{{node}} GPU {{gpu}}"
GRID_COLUMNS = 24  # Grafana's dashboard grid

Panel = dict[str, Any]


# --- building blocks ---------------------------------------------------------------------------


def target(
    expr: str, legend: str = "", *, ref: str = "A", instant: bool = False, table: bool = False
) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "refId": ref,
    }


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    """Absolute threshold steps; the first value is None (the base color)."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


SINGLE_COLOR = thresholds((None, "green"))


def field_config(
    unit: str,
    *,
    steps: dict[str, Any] = SINGLE_COLOR,
    minimum: float | None = None,
    maximum: float | None = None,
    decimals: int | None = None,
    custom: dict[str, Any] | None = None,
    color: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "color": color or {"mode": "thresholds"},
        "mappings": mappings or [],
        "thresholds": steps,
        "unit": unit,
    }
    for key, value in (("min", minimum), ("max", maximum), ("decimals", decimals)):
        if value is not None:
            defaults[key] = value
    if custom is not None:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": overrides or []}


def panel(
    kind: str, title: str, description: str, targets: list[dict[str, Any]], *, width: int
) -> Panel:
    """A panel ``width`` grid columns wide (of 24); ``laid_out`` places it and sets its height."""
    if not 1 <= width <= GRID_COLUMNS:
        raise ValueError(f"panel {title!r}: width {width} is not within 1-{GRID_COLUMNS}")
    return {
        "datasource": DATASOURCE,
        "description": description,
        "targets": targets,
        "title": title,
        "type": kind,
        "gridPos": {"w": width},
    }


def stat(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    *,
    width: int,
    steps: dict[str, Any] = SINGLE_COLOR,
    overrides: list[dict[str, Any]] | None = None,
    decimals: int | None = None,
) -> Panel:
    result = panel("stat", title, description, targets, width=width)
    result["fieldConfig"] = field_config(unit, steps=steps, overrides=overrides, decimals=decimals)
    result["options"] = {
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showPercentChange": False,
        "textMode": "auto",
        "wideLayout": True,
    }
    return result


def timeseries(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    *,
    width: int,
    steps: dict[str, Any] = SINGLE_COLOR,
    threshold_line: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    decimals: int | None = None,
    stack: bool = False,
    bars: bool = False,
    overrides: list[dict[str, Any]] | None = None,
) -> Panel:
    custom = {
        "axisPlacement": "auto",
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 30 if stack or bars else 10,
        "gradientMode": "none",
        "lineInterpolation": "linear",
        "lineWidth": 1,
        "pointSize": 4,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "dashed" if threshold_line else "off"},
    }
    result = panel("timeseries", title, description, targets, width=width)
    result["fieldConfig"] = field_config(
        unit,
        steps=steps,
        minimum=minimum,
        maximum=maximum,
        decimals=decimals,
        custom=custom,
        color={"mode": "palette-classic"},
        overrides=overrides,
    )
    result["options"] = {
        "legend": {"calcs": ["lastNotNull", "max"], "displayMode": "table", "placement": "right"},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return result


def state_timeline(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    mappings: list[dict[str, Any]],
    *,
    width: int,
) -> Panel:
    result = panel("state-timeline", title, description, targets, width=width)
    result["fieldConfig"] = field_config(
        unit,
        mappings=mappings,
        custom={"fillOpacity": 80, "lineWidth": 0},
    )
    result["options"] = {
        "alignValue": "left",
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
        "mergeValues": True,
        "rowHeight": 0.8,
        "showValue": "never",
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return result


def value_map(value: int, text: str, color: str) -> dict[str, Any]:
    return {
        "options": {str(value): {"color": color, "index": value, "text": text}},
        "type": "value",
    }


def table(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    *,
    width: int,
    columns: dict[str, str],
    sort_by: str | None = None,
    overrides: list[dict[str, Any]] | None = None,
) -> Panel:
    """A table of instant queries: ``columns`` maps label (or Value) to header, in order.

    With several targets each query's value is the column ``Value #<refId>``; the queries'
    rows are merged where their labels agree, so each must carry the same labels.
    """
    result = panel("table", title, description, targets, width=width)
    result["fieldConfig"] = field_config(
        unit,
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True},
        overrides=overrides,
    )
    result["options"] = {
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "fields": ""},
        "showHeader": True,
        "sortBy": [{"displayName": columns[sort_by], "desc": True}] if sort_by else [],
    }
    merge = [{"id": "merge", "options": {}}] if len(targets) > 1 else []
    result["transformations"] = [
        *merge,
        {
            "id": "filterFieldsByName",
            "options": {"include": {"names": list(columns)}},
        },
        {
            "id": "organize",
            "options": {
                "excludeByName": {},
                "indexByName": {name: index for index, name in enumerate(columns)},
                "renameByName": columns,
            },
        },
    ]
    return result


def bar_gauge(
    title: str, description: str, targets: list[dict[str, Any]], unit: str, *, width: int
) -> Panel:
    result = panel("bargauge", title, description, targets, width=width)
    result["fieldConfig"] = field_config(unit, minimum=0, color={"mode": "palette-classic"})
    result["options"] = {
        "displayMode": "gradient",
        "maxVizHeight": 300,
        "minVizHeight": 16,
        "minVizWidth": 8,
        "namePlacement": "left",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "sizing": "auto",
        "valueMode": "color",
    }
    return result


def by_name(name: str, **properties: Any) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def colored_column(name: str, steps: dict[str, Any], **properties: Any) -> dict[str, Any]:
    """A table column whose text takes the color of its threshold step."""
    return by_name(
        name, thresholds=steps, **{"custom.cellOptions": {"type": "color-text"}}, **properties
    )


def per_gpu(expr: str) -> str:
    """``expr`` with exactly the labels of one GPU (no metric name), so that the queries of a
    merged table agree on every label and their values land on one row."""
    return f"max by (instance, node, gpu, uuid) ({expr})"


def unknown_user(expr: str) -> str:
    """Name the empty user (process owner not readable) in legends and tables."""
    return f'label_replace({expr}, "user", "(unknown)", "user", "")'


# --- the rows ----------------------------------------------------------------------------------


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


def node_row() -> list[Panel]:
    return [
        timeseries(
            "GPU utilization",
            "Share of the sample period during which a kernel ran on the GPU.",
            [target(f"gpu_utilization_ratio{{{NODE_GPU}}}", GPU_LEGEND)],
            "percentunit",
            minimum=0,
            maximum=1,
            width=12,
        ),
        timeseries(
            "GPU memory bandwidth utilization",
            "Share of the sample period during which device memory was read or written.",
            [target(f"gpu_memory_utilization_ratio{{{NODE_GPU}}}", GPU_LEGEND)],
            "percentunit",
            minimum=0,
            maximum=1,
            width=12,
        ),
        timeseries(
            "GPU memory used",
            "Device memory in use on each GPU, by all processes and the driver.",
            [target(f"gpu_memory_used_bytes{{{NODE_GPU}}}", GPU_LEGEND)],
            "bytes",
            minimum=0,
            width=12,
        ),
        timeseries(
            "GPU memory used (share)",
            "Memory in use as a share of the GPU's memory. The dashed line is the "
            "GpuMemoryNearlyFull alert threshold (95%).",
            [
                target(
                    f"gpu_memory_used_bytes{{{NODE_GPU}}} / gpu_memory_total_bytes{{{NODE_GPU}}}",
                    GPU_LEGEND,
                )
            ],
            "percentunit",
            steps=thresholds((None, "green"), (MEMORY_FULL_RATIO, "red")),
            threshold_line=True,
            minimum=0,
            maximum=1,
            width=12,
        ),
        timeseries(
            "GPU temperature",
            f"Core temperature. The dashed line is the GpuHot alert threshold ({HOT_CELSIUS} °C).",
            [target(f"gpu_temperature_celsius{{{NODE_GPU}}}", GPU_LEGEND)],
            "celsius",
            steps=thresholds((None, "green"), (HOT_CELSIUS, "red")),
            threshold_line=True,
            width=12,
        ),
        timeseries(
            "GPU power",
            "Power drawn by each GPU; dashed: the power limit the driver enforces.",
            [
                target(f"gpu_power_watts{{{NODE_GPU}}}", GPU_LEGEND),
                target(f"gpu_power_limit_watts{{{NODE_GPU}}}", f"{GPU_LEGEND} limit", ref="B"),
            ],
            "watt",
            minimum=0,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {
                            "id": "custom.lineStyle",
                            "value": {"dash": [10, 10], "fill": "dash"},
                        },
                        {"id": "custom.fillOpacity", "value": 0},
                    ],
                }
            ],
            width=12,
        ),
    ]


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


def jobs_row() -> list[Panel]:
    """Slurm jobs, Kubernetes namespaces and pods, from the attribution recording rules."""
    job_gpu = f'{NODE_GPU}, slurm_job=~".+"'
    pod_gpu = f'{NODE_GPU}, pod=~".+"'
    return [
        timeseries(
            "GPUs per Slurm job",
            "GPUs on which a Slurm job's processes hold memory (several processes of one job "
            "on one GPU count once). The job comes from the process's cgroup; processes "
            "outside any job are left out.",
            [
                target(
                    "count by (slurm_job) "
                    f"(node_gpu_slurm_job:gpu_process_memory_used_bytes:sum{{{job_gpu}}} > 0)",
                    "job {{slurm_job}}",
                )
            ],
            "none",
            minimum=0,
            decimals=0,
            stack=True,
            width=8,
        ),
        timeseries(
            "GPU memory per Slurm job",
            "GPU memory held by each Slurm job's processes on the selected nodes and GPUs.",
            [
                target(
                    "sum by (slurm_job) "
                    f"(node_gpu_slurm_job:gpu_process_memory_used_bytes:sum{{{job_gpu}}})",
                    "job {{slurm_job}}",
                )
            ],
            "bytes",
            minimum=0,
            stack=True,
            width=8,
        ),
        bar_gauge(
            "GPU-hours per Slurm job in the selected range",
            "GPU-hours each Slurm job used over the dashboard's time range, from the "
            "slurm_job:gpu_seconds:total counter (whole cluster, not filtered by node).",
            [
                target(
                    "sort_desc(increase(slurm_job:gpu_seconds:total[$__range]) / 3600)",
                    "job {{slurm_job}}",
                    instant=True,
                )
            ],
            "h",
            width=8,
        ),
        timeseries(
            "GPUs per namespace",
            "GPUs on which the pods of each Kubernetes namespace hold memory (a GPU shared by "
            "two pods of one namespace counts once). Pods come from the kubelet.",
            [
                target(
                    "count by (namespace) (group by (node, gpu, uuid, namespace) "
                    f"(node_gpu_pod:gpu_process_memory_used_bytes:sum{{{pod_gpu}}} > 0))",
                    "{{namespace}}",
                )
            ],
            "none",
            minimum=0,
            decimals=0,
            stack=True,
            width=8,
        ),
        timeseries(
            "GPU memory per pod",
            "GPU memory held by the processes of each Kubernetes pod.",
            [
                target(
                    "sum by (namespace, pod) "
                    f"(node_gpu_pod:gpu_process_memory_used_bytes:sum{{{pod_gpu}}})",
                    "{{namespace}}/{{pod}}",
                )
            ],
            "bytes",
            minimum=0,
            stack=True,
            width=8,
        ),
        bar_gauge(
            "GPU-hours per namespace in the selected range",
            "GPU-hours each Kubernetes namespace used over the dashboard's time range, from "
            "the namespace:gpu_seconds:total counter (whole cluster, not filtered by node).",
            [
                target(
                    "sort_desc(increase(namespace:gpu_seconds:total[$__range]) / 3600)",
                    "{{namespace}}",
                    instant=True,
                )
            ],
            "h",
            width=8,
        ),
        table(
            "Per-process SM utilization",
            "Share of the last sample period a kernel of each process ran, with the process's "
            "user, Slurm job and pod. Only on GPUs whose driver reports per-process "
            "utilization; a process with memory and 0% here holds the GPU without using it.",
            [
                target(
                    unknown_user(
                        f"gpu_process_sm_utilization_ratio{{{NODE_GPU}}}"
                        " * on (instance, gpu, uuid, pid)"
                        " group_left (user, slurm_job, namespace, pod)"
                        f' gpu_process_info{{{NODE_GPU}, user=~"$user"}}'
                    ),
                    instant=True,
                    table=True,
                )
            ],
            "percentunit",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "user": "User",
                "pid": "PID",
                "slurm_job": "Slurm job",
                "namespace": "Namespace",
                "pod": "Pod",
                "Value": "SM utilization",
            },
            sort_by="Value",
            overrides=[
                colored_column(
                    "SM utilization",
                    thresholds((None, "orange"), (IDLE_RATIO, "green")),
                    min=0,
                    max=1,
                )
            ],
            width=12,
        ),
        table(
            "Idle GPUs held by processes",
            "Processes holding memory on an idle-held GPU (no process on it has computed for "
            "the idle-held threshold, 30 minutes unless changed, as on the status page): the "
            "GpuIdleButHeld alert. Basis process: judged by the processes' own SM utilization "
            "(per-process utilization reported); basis gpu: by the whole GPU's utilization, "
            f"idle below {IDLE_RATIO:.0%}.",
            [
                target(
                    unknown_user(
                        f'ALERTS{{alertname="GpuIdleButHeld", {NODE_GPU}, user=~"$user"}}'
                    ),
                    instant=True,
                    table=True,
                )
            ],
            "none",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "user": "User",
                "pid": "PID",
                "slurm_job": "Slurm job",
                "namespace": "Namespace",
                "pod": "Pod",
                "basis": "Basis",
                "alertstate": "State",
            },
            overrides=[
                by_name(
                    "State",
                    mappings=[
                        {
                            "type": "value",
                            "options": {
                                "pending": {"color": "orange", "index": 0},
                                "firing": {"color": "red", "index": 1},
                            },
                        }
                    ],
                    **{"custom.cellOptions": {"type": "color-text"}},
                )
            ],
            width=12,
        ),
    ]


def health_row() -> list[Panel]:
    return [
        state_timeline(
            "Throttling",
            "Reasons holding a GPU's clocks down, while active (idle is left out). "
            "sw_power_cap is normal at full load; thermal and hardware reasons raise the "
            "GpuThrottled alert after 10 minutes.",
            [
                target(
                    f'gpu_throttle_reason{{{NODE_GPU}, reason!="gpu_idle"}} == 1',
                    f"{GPU_LEGEND} {{{{reason}}}}",
                )
            ],
            "bool_on_off",
            [value_map(1, "throttled", "orange")],
            width=12,
        ),
        timeseries(
            "ECC errors",
            "New ECC memory errors per interval. Any uncorrected error raises the "
            "GpuUncorrectableEccErrors alert; GPUs without ECC have no series.",
            [
                target(
                    f"increase(gpu_ecc_errors_total{{{NODE_GPU}}}[$__rate_interval])",
                    f"{GPU_LEGEND} {{{{type}}}}",
                )
            ],
            "none",
            minimum=0,
            bars=True,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".*uncorrected"},
                    "properties": [
                        {"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}}
                    ],
                }
            ],
            width=12,
        ),
        stat(
            "Lost GPUs",
            "GPUs that no longer answer NVML (GPU_IS_LOST); each needs a reset or reboot.",
            [target(f"count(gpu_up{{{NODE_GPU}}} == 0) or vector(0)", "lost")],
            "none",
            steps=thresholds((None, "green"), (1, "red")),
            decimals=0,
            width=6,
        ),
        stat(
            "Uncorrected ECC errors in range",
            "Uncorrectable ECC errors counted over the dashboard's time range.",
            [
                target(
                    "sum(increase(gpu_ecc_errors_total"
                    f'{{{NODE_GPU}, type="uncorrected"}}[$__range])) or vector(0)',
                    "uncorrected",
                    instant=True,
                )
            ],
            "none",
            steps=thresholds((None, "green"), (1, "red")),
            decimals=0,
            width=6,
        ),
        *hardware_panels(),
    ]


def hardware_panels() -> list[Panel]:
    """XIDs, memory row remapping, PCIe, NVLink and MIG."""
    ok_or_bad = [value_map(0, "no", "green"), value_map(1, "yes", "red")]
    return [
        timeseries(
            "XID errors",
            "XID error events the driver reported per interval, by code (see the GpuXid* "
            "alerts for what each code means). The counter is kept by the exporter since it "
            "started; the first event of a code on a GPU creates its series and shows under "
            "Last XID rather than here.",
            [
                target(
                    f"increase(gpu_xid_errors_total{{{NODE_GPU}}}[$__rate_interval])",
                    f"{GPU_LEGEND} XID {{{{xid}}}}",
                )
            ],
            "none",
            steps=thresholds((None, "green"), (1, "red")),
            minimum=0,
            bars=True,
            width=12,
        ),
        table(
            "Last XID",
            "The last XID error of each GPU that reported one since its exporter started, "
            "and when.",
            [
                target(per_gpu(f"gpu_last_xid{{{NODE_GPU}}}"), instant=True, table=True),
                target(
                    per_gpu(f"gpu_last_xid_timestamp_seconds{{{NODE_GPU}}}") + " * 1000",
                    ref="B",
                    instant=True,
                    table=True,
                ),
            ],
            "none",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "uuid": "UUID",
                "Value #A": "Last XID",
                "Value #B": "Seen at",
            },
            sort_by="Value #B",
            overrides=[by_name("Seen at", unit="dateTimeAsIso")],
            width=12,
        ),
        table(
            "Memory row remapping",
            "Rows of device memory remapped after ECC errors (A100 and later), whether a remap "
            "waits for a GPU reset (GpuRowRemapPending) and whether remapping failed "
            "(GpuRowRemapFailure: replace the GPU). GPUs without row remapping have no rows.",
            [
                target(
                    per_gpu(f'gpu_remapped_rows{{{NODE_GPU}, cause="correctable"}}'),
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f'gpu_remapped_rows{{{NODE_GPU}, cause="uncorrectable"}}'),
                    ref="B",
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f"gpu_remapped_rows_pending{{{NODE_GPU}}}"),
                    ref="C",
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f"gpu_remapped_rows_failure{{{NODE_GPU}}}"),
                    ref="D",
                    instant=True,
                    table=True,
                ),
            ],
            "none",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "uuid": "UUID",
                "Value #A": "Correctable",
                "Value #B": "Uncorrectable",
                "Value #C": "Reset pending",
                "Value #D": "Failed",
            },
            overrides=[
                colored_column("Uncorrectable", thresholds((None, "green"), (1, "orange"))),
                colored_column("Reset pending", thresholds((None, "green"), (1, "orange"))),
                colored_column("Failed", thresholds((None, "green"), (1, "red"))),
                by_name("Reset pending", mappings=ok_or_bad),
                by_name("Failed", mappings=ok_or_bad),
            ],
            width=12,
        ),
        table(
            "PCIe link",
            "Current PCIe generation and width (lanes) against the most the GPU and slot "
            "support. An idle GPU lowers its link to save power, so below the maximum is only "
            "a problem under load (GpuPcieLinkDegraded); replays count packets sent again "
            "after a link error, over the selected range.",
            [
                target(
                    per_gpu(f"gpu_pcie_link_generation{{{NODE_GPU}}}"), instant=True, table=True
                ),
                target(
                    per_gpu(f"gpu_pcie_link_generation_max{{{NODE_GPU}}}"),
                    ref="B",
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f"gpu_pcie_link_width{{{NODE_GPU}}}"), ref="C", instant=True, table=True
                ),
                target(
                    per_gpu(f"gpu_pcie_link_width_max{{{NODE_GPU}}}"),
                    ref="D",
                    instant=True,
                    table=True,
                ),
                target(
                    per_gpu(f"increase(gpu_pcie_replay_errors_total{{{NODE_GPU}}}[$__range])"),
                    ref="E",
                    instant=True,
                    table=True,
                ),
            ],
            "none",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "uuid": "UUID",
                "Value #A": "Generation",
                "Value #B": "Max generation",
                "Value #C": "Width",
                "Value #D": "Max width",
                "Value #E": "Replays in range",
            },
            overrides=[
                colored_column("Replays in range", thresholds((None, "green"), (1, "orange"))),
            ],
            width=12,
        ),
        timeseries(
            "NVLink errors",
            "NVLink errors per interval, by link and kind (CRC flit and data, replay, "
            "recovery). More than 10 in 10 minutes for 10 minutes raises "
            "GpuNvlinkErrorsRising.",
            [
                target(
                    f"increase(gpu_nvlink_errors_total{{{NODE_GPU}}}[$__rate_interval])",
                    f"{GPU_LEGEND} link {{{{link}}}} {{{{type}}}}",
                )
            ],
            "none",
            steps=thresholds((None, "green"), (1, "orange")),
            minimum=0,
            bars=True,
            width=12,
        ),
        state_timeline(
            "NVLink links",
            "State of each NVLink link of each GPU; a link that was up and stays down raises "
            "GpuNvlinkDown. Links never cabled show as down from the start.",
            [
                target(
                    f"gpu_nvlink_up{{{NODE_GPU}}}",
                    f"{GPU_LEGEND} link {{{{link}}}}",
                )
            ],
            "bool_on_off",
            [value_map(1, "up", "green"), value_map(0, "down", "red")],
            width=12,
        ),
        table(
            "MIG devices",
            "MIG devices of GPUs in MIG mode: GPU instance (GI), compute instance (CI), "
            "profile, and the memory in use of the memory the device has. GPUs in MIG mode "
            "report no device-level utilization.",
            [
                target(
                    f"gpu_mig_memory_used_bytes{{{NODE_GPU}}}"
                    " * on (instance, gpu, uuid, mig_uuid) group_left (profile)"
                    f" gpu_mig_info{{{NODE_GPU}}}",
                    instant=True,
                    table=True,
                ),
                target(
                    f"gpu_mig_memory_total_bytes{{{NODE_GPU}}}"
                    " * on (instance, gpu, uuid, mig_uuid) group_left (profile)"
                    f" gpu_mig_info{{{NODE_GPU}}}",
                    ref="B",
                    instant=True,
                    table=True,
                ),
            ],
            "bytes",
            columns={
                "node": "Node",
                "gpu": "GPU",
                "gi": "GI",
                "ci": "CI",
                "profile": "Profile",
                "mig_uuid": "MIG UUID",
                "Value #A": "Memory used",
                "Value #B": "Memory",
            },
            overrides=[by_name(name, unit="none") for name in ("GPU", "GI", "CI")],
            width=12,
        ),
        table(
            "Processes on MIG devices",
            "Processes holding memory on a MIG device, with the device's profile and the "
            "process's user, Slurm job and pod.",
            [
                target(
                    unknown_user(
                        f'gpu_process_memory_used_bytes{{{NODE_GPU}, mig_uuid!="", '
                        'user=~"$user"}'
                        " * on (instance, gpu, uuid, mig_uuid) group_left (profile, gi, ci)"
                        f" gpu_mig_info{{{NODE_GPU}}}"
                        " * on (instance, gpu, uuid, mig_uuid, pid)"
                        " group_left (slurm_job, namespace, pod)"
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
                "gi": "GI",
                "ci": "CI",
                "profile": "Profile",
                "user": "User",
                "pid": "PID",
                "slurm_job": "Slurm job",
                "pod": "Pod",
                "Value": "GPU memory",
            },
            sort_by="Value",
            width=12,
        ),
    ]


def exporters_row() -> list[Panel]:
    return [
        state_timeline(
            "Exporter collectors",
            "Whether each collector of each node's exporter (nvml, processes, host) succeeded "
            "on its last pass. Failing for 5 minutes raises GpuCollectionFailing.",
            [
                target(
                    f"gpu_exporter_collector_success{{{NODE}}}",
                    "{{node}} {{collector}}",
                )
            ],
            "bool_on_off",
            [value_map(1, "ok", "green"), value_map(0, "failing", "red")],
            width=12,
        ),
        timeseries(
            "Sample age",
            "Seconds since each exporter last finished a sample. The dashed line is the "
            f"GpuCollectionStale alert threshold ({STALE_SECONDS} s): above it, an NVML call "
            "is hanging.",
            [
                target(
                    f"time() - gpu_exporter_last_collect_timestamp_seconds{{{NODE}}}",
                    "{{node}}",
                )
            ],
            "s",
            steps=thresholds((None, "green"), (STALE_SECONDS, "red")),
            threshold_line=True,
            minimum=0,
            width=12,
        ),
        timeseries(
            "Collector duration",
            "How long each collector's last pass took on each node.",
            [
                target(
                    f"gpu_exporter_collector_duration_seconds{{{NODE}}}",
                    "{{node}} {{collector}}",
                )
            ],
            "s",
            minimum=0,
            width=12,
        ),
        table(
            "Exporters",
            "Exporter and driver versions on each node.",
            [
                target(
                    f"gpu_exporter_build_info{{{NODE}}}",
                    instant=True,
                    table=True,
                )
            ],
            "none",
            columns={
                "node": "Node",
                "version": "Exporter",
                "driver_version": "Driver",
                "cuda_version": "CUDA",
                "nvml_version": "NVML",
            },
            width=24,
        ),
    ]


# (title, panels, height of the row's panels); each panel states its own width.
ROWS: tuple[tuple[str, Callable[[], list[Panel]], int], ...] = (
    ("Cluster overview", cluster_row, 5),
    ("Nodes", node_row, 8),
    ("Users", user_row, 9),
    ("Jobs and pods", jobs_row, 9),
    ("Health", health_row, 8),
    ("Exporters", exporters_row, 8),
)


def laid_out() -> Iterator[Panel]:
    """Every panel with its id and grid position, rows included, in reading order."""
    ids = iter(range(1, 1000))
    y = 0
    for title, build, height in ROWS:
        yield {
            "collapsed": False,
            "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y},
            "id": next(ids),
            "panels": [],
            "title": title,
            "type": "row",
        }
        y += 1
        x = 0
        for item in build():
            width = item.pop("gridPos")["w"]
            if x + width > GRID_COLUMNS:  # no room left on this line: start the next
                x, y = 0, y + height
            item["gridPos"] = {"h": height, "w": width, "x": x, "y": y}
            item["id"] = next(ids)
            x += width
            yield item
        y += height


def query_variable(
    name: str, label: str, query: str, description: str, *, numeric: bool = False
) -> dict[str, Any]:
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": query,
        "description": description,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 3 if numeric else 1,
        "type": "query",
    }


def variables() -> list[dict[str, Any]]:
    return [
        {
            "current": {"selected": False, "text": DATASOURCE_NAME, "value": DATASOURCE_UID},
            "description": "Prometheus that scrapes the gpu-exporters and loads the "
            "gpu-cluster-monitor recording rules.",
            "hide": 0,
            "includeAll": False,
            "label": "Data source",
            "multi": False,
            "name": "datasource",
            "options": [],
            "query": "prometheus",
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
            "type": "datasource",
        },
        query_variable(
            "node",
            "Node",
            'label_values(up{job="gpu"}, node)',
            "GPU nodes, by the name in hosts.txt (down nodes included).",
        ),
        query_variable(
            "gpu",
            "GPU",
            'label_values(gpu_info{node=~"$node"}, gpu)',
            "GPU index (as nvidia-smi numbers them) on the selected nodes.",
            numeric=True,
        ),
        query_variable(
            "user",
            "User",
            "label_values(user:gpu_seconds:total, user)",
            "Users who held GPU memory in the selected time range.",
        ),
    ]


def build() -> dict[str, Any]:
    """The provisioned dashboard."""
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "GPUs of the cluster from gpu-cluster-monitor: use, memory, temperature, "
        "power, per-user accounting and health.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "liveNow": False,
        "panels": list(laid_out()),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["gpu", "nvidia", "gpu-cluster-monitor"],
        "templating": {"list": variables()},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {"refresh_intervals": ["15s", "30s", "1m", "5m", "15m", "1h"]},
        "timezone": "",
        "title": "GPU cluster",
        "uid": UID,
        "version": 1,
        "weekStart": "",
    }


# --- the import copy ---------------------------------------------------------------------------


def _replace_strings(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace_strings(item, old, new) for item in value]
    if isinstance(value, dict):
        return {key: _replace_strings(item, old, new) for key, item in value.items()}
    return value


def import_copy(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The provisioned dashboard as Grafana's "export for sharing externally" would write it."""
    body = _replace_strings(copy.deepcopy(dashboard), DATASOURCE_UID, "${" + IMPORT_INPUT + "}")
    body["templating"]["list"][0]["current"] = {
        "selected": False,
        "text": "${" + IMPORT_INPUT + "}",
        "value": "${" + IMPORT_INPUT + "}",
    }
    panel_types = sorted({p["type"] for p in dashboard["panels"] if p["type"] != "row"})
    requires = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        *({"type": "panel", "id": kind, "name": kind, "version": ""} for kind in panel_types),
    ]
    header = {
        "__inputs": [
            {
                "name": IMPORT_INPUT,
                "label": "Prometheus",
                "description": "Prometheus that scrapes the gpu-exporters and loads the "
                "gpu-cluster-monitor recording rules",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__elements": {},
        "__requires": requires,
    }
    return {**header, **body}


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def expected_files() -> dict[Path, str]:
    dashboard = build()
    return {PROVISIONED: render(dashboard), IMPORT_COPY: render(import_copy(dashboard))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only report whether the committed files are current"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if args.check and stale:
        names = ", ".join(str(path.relative_to(HERE.parent)) for path in stale)
        print(f"out of date: {names}; run python grafana/build_dashboard.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
