"""Shared panel helpers: queries, field configs and the panel kinds every row builds on.

Also the selectors, legends and alert thresholds the rows share, so that a threshold drawn on
a panel is written once, beside the others, and equals the alert's (``prometheus/rules``).
"""

from __future__ import annotations

from typing import Any

from status_api.vocabulary import LOW_SM_ACTIVITY

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Alert thresholds (prometheus/rules/alerts.yml), drawn on the matching panels.
IDLE_RATIO = 0.05  # GpuIdleButHeld: a GPU below 5% utilization counts as idle
HOT_CELSIUS = 85
MEMORY_FULL_RATIO = 0.95
STALE_SECONDS = 60
# SM activity below this counts as nearly idle: the page, GpuLowSmActivity and the dashboard
# take it from its one definition.
LOW_SM_RATIO = LOW_SM_ACTIVITY

NODE = 'node=~"$node"'
NODE_GPU = 'node=~"$node", gpu=~"$gpu"'
GPU_LEGEND = "{{node}} GPU {{gpu}}"
GRID_COLUMNS = 24  # Grafana's dashboard grid

Panel = dict[str, Any]


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
