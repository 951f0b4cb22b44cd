"""The whole dashboard: rows laid out on Grafana's grid, variables, and the import copy.

``ROWS`` lists the rows in reading order with the height of their panels; each row's module
builds its panels, and each panel states its own width. ``import_copy`` derives the copy for
manual import from the provisioned dashboard, so the two cannot drift.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

from .cluster import cluster_row
from .efficiency import efficiency_row
from .energy import energy_row
from .exporters import exporters_row
from .health import health_row
from .jobs import jobs_row
from .nodes import node_row
from .panels import DATASOURCE, GRID_COLUMNS, Panel
from .users import user_row

UID = "gpu-cluster"
DATASOURCE_UID = "gpu-prometheus"
DATASOURCE_NAME = "Prometheus (GPU cluster)"
IMPORT_INPUT = "DS_PROMETHEUS"


# (title, panels, height of the row's panels); each panel states its own width. New rows go
# last, so that the ids of the panels before them (and links to them) stay as they were.
ROWS: tuple[tuple[str, Callable[[], list[Panel]], int], ...] = (
    ("Cluster overview", cluster_row, 5),
    ("Nodes", node_row, 8),
    ("Users", user_row, 9),
    ("Jobs and pods", jobs_row, 9),
    ("Health", health_row, 8),
    ("Exporters", exporters_row, 8),
    ("Efficiency", efficiency_row, 8),
    ("Energy", energy_row, 8),
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
