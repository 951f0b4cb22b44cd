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
    """A table of an instant query: ``columns`` maps label (or Value) to header, in order."""
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
    result["transformations"] = [
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
            "GPUs on which at least one process holds memory.",
            [target(f"sum(node:gpu_in_use:sum{{{NODE}}})", "in use")],
            "none",
            steps=thresholds((None, "blue")),
            decimals=0,
            width=3,
        ),
        stat(
            "GPUs free",
            "GPUs that answer and on which no process holds memory; orange when none is free.",
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
    ("Health", health_row, 8),
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
