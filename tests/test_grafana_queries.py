"""Every query of the Grafana dashboard returns data from a real Prometheus.

Grafana cannot run here, so the test does what Grafana would: it interpolates each panel's
query with the variables set to All and to one node, GPU and user, sends it to Prometheus
(a range query for time series, an instant query for instant targets) and requires an answer
without error and with data. The scenario is built so that no panel is legitimately empty: one
GPU has ECC errors and throttling, one is lost, one process has an owner that cannot be read.
Variable queries must return the cluster's nodes, GPUs and users.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from tests.support import dashboard as dash
from tests.support.cluster import Cluster, monitored_cluster

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

DASHBOARD = dash.load()
RATE_INTERVAL = "1m"  # what Grafana derives from the data source's timeInterval of 15 s


def test_every_panel_query_and_variable_returns_data(exporter_factory, worker_pids, tmp_path):
    started = time.time()
    with monitored_cluster(exporter_factory, worker_pids, tmp_path, hot=True) as cluster:
        check_variable_queries(cluster)
        range_ = f"{math.ceil(time.time() - started)}s"
        everything = {"node": None, "gpu": None, "user": None}
        one = {"node": ["localhost"], "gpu": ["0"], "user": [cluster.user]}
        all_results = run_every_panel(cluster, everything, range_)
        one_results = run_every_panel(cluster, one, range_)
        check_values(cluster, all_results, one_results)


def variable_query(name: str) -> tuple[str, str]:
    """(match expression, label) of a ``label_values(expr, label)`` variable."""
    query = dash.variables(DASHBOARD)[name]["query"]
    inner, label = query[len("label_values(") : -1].rsplit(", ", 1)
    return inner, label


def check_variable_queries(cluster: Cluster) -> None:
    prometheus = cluster.prometheus

    def values(name: str, **selection: list[str] | None) -> list[str]:
        inner, label = variable_query(name)
        match = dash.render(inner, DASHBOARD, selection, range_="1h", rate_interval="1m")
        return prometheus.label_values(label, match)

    assert values("node") == ["127.0.0.1", "localhost"]
    assert values("gpu", node=None) == ["0", "1", "2", "3"]
    assert values("gpu", node=["127.0.0.1"]) == ["0", "1"]
    assert values("gpu", node=["127.0.0.1", "localhost"]) == ["0", "1", "2", "3"]
    # The process whose owner is unknown has an empty user, which label_values leaves out.
    assert values("user") == [cluster.user]


def run_every_panel(
    cluster: Cluster, selection: dict[str, list[str] | None], range_: str
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each target's result by (panel title, refId); fails listing every empty or failed one."""
    prometheus = cluster.prometheus
    now = time.time()
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    problems = []
    for panel in dash.panels(DASHBOARD):
        for target in panel["targets"]:
            expr = dash.render(
                target["expr"], DASHBOARD, selection, range_=range_, rate_interval=RATE_INTERVAL
            )
            where = f"{panel['title']!r} {target['refId']} with {selection}: {expr}"
            try:
                if target["instant"]:
                    result = prometheus.query(expr, at=now)
                else:
                    result = prometheus.query_range(expr, start=now - 30, end=now, step=1)
            except AssertionError as error:
                problems.append(f"{where}\n  error: {error}")
                continue
            if not result:
                problems.append(f"{where}\n  no data")
            results[(panel["title"], target["refId"])] = result
    assert not problems, "\n".join(problems)
    return results


def latest(result: list[dict[str, Any]]) -> list[float]:
    """The last value of each series of an instant or range result."""
    return [
        float(series["value"][1]) if "value" in series else float(series["values"][-1][1])
        for series in result
    ]


def check_values(
    cluster: Cluster,
    everything: dict[tuple[str, str], list[dict[str, Any]]],
    one: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    """Spot checks that the data is the scenario's, not merely present."""
    assert latest(everything[("Nodes", "A")]) == [2]
    assert latest(everything[("Nodes", "B")]) == [0]
    assert latest(everything[("GPUs in use", "A")]) == [4]
    assert latest(everything[("GPUs free", "A")]) == [1]
    assert latest(everything[("Lost GPUs", "A")]) == [1]
    assert latest(everything[("Active users", "A")]) == [2]
    assert latest(everything[("Alerts firing", "A")])[0] >= 1

    rows = everything[("Processes on GPUs", "A")]
    assert len(rows) == 6
    assert {row["metric"]["user"] for row in rows} == {cluster.user, "(unknown)"}
    assert all({"node", "gpu", "user", "pid"} <= set(row["metric"]) for row in rows)
    mine = one[("Processes on GPUs", "A")]
    assert {row["metric"]["pid"] for row in mine} == {
        str(p) for p in cluster.workers["localhost"][:2]
    }
    assert all("sleep" in row["metric"]["command"] for row in mine)
    # The other node does not publish command lines: its rows are there, without the column.
    theirs = [row for row in rows if row["metric"]["node"] == "127.0.0.1"]
    assert len(theirs) == 2 and all("command" not in row["metric"] for row in theirs)

    hours = {
        s["metric"]["user"]: float(s["value"][1])
        for s in everything[("GPU-hours in the selected range", "A")]
    }
    assert set(hours) == {cluster.user, "(unknown)"}
    assert hours[cluster.user] > hours["(unknown)"] > 0

    reasons = {s["metric"]["reason"] for s in one[("Throttling", "A")]}
    assert reasons == {"sw_power_cap", "hw_thermal_slowdown"}
    ecc_types = {s["metric"]["type"] for s in one[("ECC errors", "A")]}
    assert ecc_types == {"corrected", "uncorrected"}
