"""A real Prometheus with the shipped configuration scrapes two real exporters on the fake NVML.

Checked through Prometheus' HTTP API: targets up with their hosts.txt node label, raw values
equal to the scenarios, recording rules per node and per user, and a GPU turning hot taking the
GpuHot alert through pending to firing (``for:`` shortened in a copy of the rules).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.cluster import GIB, HOT_CELSIUS, UNKNOWN_PID, Cluster, monitored_cluster

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]


def by(result: list[dict], *labels: str) -> dict[Any, float]:
    """``{label values: value}`` of a query result; a single label's value is the bare key."""

    def key(metric: dict[str, str]) -> Any:
        values = tuple(metric.get(label, "") for label in labels)
        return values[0] if len(values) == 1 else values

    return {key(sample["metric"]): float(sample["value"][1]) for sample in result}


def test_prometheus_scrapes_records_and_alerts(exporter_factory, worker_pids, tmp_path):
    # One Prometheus for all steps: it takes a few seconds to pick up file_sd targets.
    with monitored_cluster(exporter_factory, worker_pids, tmp_path, alert_for="4s") as cluster:
        check_targets(cluster)
        check_raw_values(cluster)
        check_recording_rules(cluster)
        check_hot_gpu_alert_goes_pending_then_firing(cluster)


def check_targets(cluster: Cluster) -> None:
    targets = cluster.prometheus.targets()
    assert {t["labels"]["node"] for t in targets} == {"localhost", "127.0.0.1"}
    assert all(t["health"] == "up" and t["labels"]["job"] == "gpu" for t in targets), targets
    for target in targets:
        node = target["labels"]["node"]
        assert target["labels"]["instance"] == f"{node}:{cluster.exporters[node].port}"


def check_raw_values(cluster: Cluster) -> None:
    """Values match the scenarios, per node and GPU."""
    prometheus = cluster.prometheus
    temperatures = by(prometheus.query("gpu_temperature_celsius"), "node", "gpu")
    totals = by(prometheus.query("gpu_memory_total_bytes"), "node", "gpu")
    utilization = by(prometheus.query("gpu_utilization_ratio"), "node", "gpu")
    for node, scenario in cluster.scenarios.items():
        for index, gpu in enumerate(scenario.gpus):
            key = (node, str(index))
            if gpu.lost:
                assert key not in temperatures
                continue
            assert temperatures[key] == gpu.temperature
            assert totals[key] == gpu.memory_total
            assert utilization[key] == pytest.approx(gpu.utilization_gpu / 100)
    assert by(prometheus.query("gpu_up == 0"), "node", "gpu") == {("localhost", "3"): 0}
    ecc = by(prometheus.query("gpu_ecc_errors_total"), "node", "gpu", "type")
    assert ecc[("localhost", "0", "uncorrected")] == 2
    assert ecc[("localhost", "0", "corrected")] == 5
    throttled = by(prometheus.query("gpu_throttle_reason == 1"), "node", "gpu", "reason")
    assert set(throttled) == {
        ("localhost", "0", "sw_power_cap"),
        ("localhost", "0", "hw_thermal_slowdown"),
        ("localhost", "2", "gpu_idle"),
    }
    processes = by(prometheus.query("gpu_process_memory_used_bytes"), "node", "pid", "user")
    assert processes[("localhost", str(UNKNOWN_PID), "")] == 1 * GIB
    assert processes[("localhost", str(cluster.workers["localhost"][0]), cluster.user)] == 2 * GIB


def check_recording_rules(cluster: Cluster) -> None:
    prometheus = cluster.prometheus
    user = cluster.user
    assert by(prometheus.query("node:gpus:count"), "node") == {"localhost": 4, "127.0.0.1": 2}
    assert by(prometheus.query("node:gpu_up:sum"), "node") == {"localhost": 3, "127.0.0.1": 2}
    assert by(prometheus.query("node:gpu_in_use:sum"), "node") == {"localhost": 2, "127.0.0.1": 2}
    assert by(prometheus.query("node:gpu_free:sum"), "node") == {"localhost": 1, "127.0.0.1": 0}

    # Per user: the two workers sharing GPU 0 count once; the unknown owner is its own user.
    node_b_memory = sum(
        p.used_bytes for g in cluster.scenarios["127.0.0.1"].gpus for p in g.processes
    )
    assert by(prometheus.query("user:gpu_count:sum"), "user") == {user: 4, "": 1}
    assert by(prometheus.query("user:gpu_process_memory_used_bytes:sum"), "user") == {
        user: (2 + 3 + 4) * GIB + node_b_memory,
        "": 1 * GIB,
    }
    assert by(prometheus.query("node_user:gpu_count:sum"), "node", "user") == {
        ("localhost", user): 2,
        ("localhost", ""): 1,
        ("127.0.0.1", user): 2,
    }
    assert by(prometheus.query("cluster:gpu_users:count")) == {(): 2}

    # GPU-seconds grow at the number of GPUs held: 4 per second for the user's workers.
    first = by(prometheus.query("user:gpu_seconds:total"), "user")
    time.sleep(3)
    second = by(prometheus.query("user:gpu_seconds:total"), "user")
    grown = second[user] - first[user]
    assert 4 * 1.5 <= grown <= 4 * 4.5, (first, second)
    assert second[""] > first[""]


def alert_states(prometheus, name: str) -> dict[tuple[str, str], str]:
    return {
        (alert["labels"]["node"], alert["labels"]["gpu"]): alert["state"]
        for alert in prometheus.alerts()
        if alert["labels"]["alertname"] == name
    }


def check_hot_gpu_alert_goes_pending_then_firing(cluster: Cluster) -> None:
    prometheus = cluster.prometheus
    # An alert without for: fires at once: the scenario's uncorrectable ECC errors.
    prometheus.wait_for(
        'ALERTS{alertname="GpuUncorrectableEccErrors", alertstate="firing"}',
        lambda result: len(result) == 1,
    )
    assert alert_states(prometheus, "GpuHot") == {}, "GPU 0 is at 70 °C, below the threshold"

    cluster.set_node_a(hot=True)
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = alert_states(prometheus, "GpuHot")
        assert set(states) <= {("localhost", "0")}, states
        seen.update(states.values())
        if "firing" in seen:
            break
        time.sleep(0.2)
    assert seen == {"pending", "firing"}, f"GpuHot states seen: {seen}"

    (alert,) = [a for a in prometheus.alerts() if a["labels"]["alertname"] == "GpuHot"]
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == f"GPU 0 on localhost is at {HOT_CELSIUS} °C"
    assert "node localhost" in alert["annotations"]["description"]
