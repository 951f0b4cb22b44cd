"""Node states and free GPUs from hand-built poll results, at the exact threshold edges."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from simulator.nodes import legacy_status
from status_api.cluster import OFFLINE, ONLINE, STALE, Cluster, NodeState, Thresholds
from status_api.hosts import parse_hosts
from status_api.poller import PollResult

pytestmark = pytest.mark.unit

THRESHOLDS = Thresholds(stale_after=10, offline_after=30, free_memory_mib=512, free_utilization=5)
HOST = parse_hosts("node1")[0]


def _ok(at: float, status: dict[str, Any] | None = None) -> PollResult:
    return PollResult(HOST, status or legacy_status("node1", gpus=1), "", at, 0.01)


def _failed(at: float, error: str = "HTTP 403: wrong password") -> PollResult:
    return PollResult(HOST, None, error, at, 0.01)


@pytest.mark.parametrize(
    ("age", "state"),
    [(0.0, ONLINE), (10.0, ONLINE), (10.001, STALE), (30.0, STALE), (30.001, OFFLINE)],
)
def test_state_by_the_age_of_the_last_good_poll(age: float, state: str) -> None:
    node = NodeState(HOST)
    node.record(_ok(1000.0))
    assert node.state(1000.0 + age, THRESHOLDS) == state


@pytest.mark.parametrize(("age", "state"), [(0.0, STALE), (30.0, STALE), (30.001, OFFLINE)])
def test_a_failed_latest_poll_makes_a_recent_node_stale(age: float, state: str) -> None:
    node = NodeState(HOST)
    node.record(_ok(1000.0))
    node.record(_failed(1001.0))
    assert node.state(1000.0 + age, THRESHOLDS) == state
    assert (node.polls, node.failures, node.last_seen) == (2, 1, 1000.0)
    assert node.error == "HTTP 403: wrong password"


def test_a_node_never_answering_is_offline_with_its_error() -> None:
    node = NodeState(HOST)
    node.record(_failed(1000.0, "no answer within 3 s"))
    assert node.state(1000.0, THRESHOLDS) == OFFLINE
    assert (node.status, node.last_seen, node.error) == (None, None, "no answer within 3 s")


def _gpu(use_mem: int | None, utilize: int | None, users: int = 0) -> dict[str, Any]:
    return {
        "index": 0,
        "name": "NVIDIA A100",
        "use_mem": use_mem,
        "tot_mem": 81920,
        "utilize": utilize,
        "temp": 30,
        "users": [
            {"pid": 1 + u, "username": "bob", "mem(MiB)": 10, "command": "x"} for u in range(users)
        ],
    }


@pytest.mark.parametrize(
    ("gpu", "free"),
    [
        (_gpu(512, 4), True),  # at the memory threshold, under the utilisation one
        (_gpu(513, 0), False),  # one MiB over
        (_gpu(0, 5), False),  # utilisation at the threshold is busy
        (_gpu(0, None), True),  # utilisation unknown: memory decides
        (_gpu(None, 0), False),  # memory unknown (a lost GPU): never free
        (_gpu(0, 0, users=1), False),  # a process holds it, however small
    ],
)
def test_free_gpu_thresholds(gpu: dict[str, Any], free: bool) -> None:
    status = legacy_status("node1", gpus=1)
    status["gpus"] = [gpu]
    cluster = Cluster(thresholds=THRESHOLDS)
    cluster.update([HOST], [_ok(time.time(), status)])
    document = json.loads(cluster.views.cluster.body)
    assert document["nodes"][0]["state"] == ONLINE
    assert document["nodes"][0]["gpus"][0]["free"] is free
    assert document["summary"]["gpus_free"] == int(free)
    # not free and healthy is in use, with or without a process to show for it
    assert document["summary"]["gpus_in_use"] == int(not free)
    assert document["nodes"][0]["gpus"][0]["state"] == ("free" if free else "in_use")


def test_summary_counts_stale_gpus_but_offers_none_of_them() -> None:
    hosts = parse_hosts("a\nb\nc")
    idle = legacy_status("x", gpus=2, users_per_gpu=0)  # GPU 0 at 87 %, GPU 1 free
    cluster = Cluster(thresholds=THRESHOLDS)
    now = time.time()
    results = [
        PollResult(hosts[0], idle, "", now, 0.01),
        PollResult(hosts[1], idle, "", now, 0.01),
        PollResult(hosts[2], None, "refused", now, 0.01),
    ]
    cluster.update(hosts, results)
    cluster.update(hosts, [PollResult(hosts[1], None, "timed out", now, 0.01)])
    document = json.loads(cluster.views.cluster.body)
    assert [n["state"] for n in document["nodes"]] == [ONLINE, STALE, OFFLINE]
    assert document["summary"] == {
        "nodes_total": 3, "nodes_online": 1, "nodes_stale": 1, "nodes_offline": 1,
        # GPU 0 computes without a process to show for it: in use; node b's two are stale
        "gpus_total": 4, "gpus_in_use": 1, "gpus_idle_held": 0, "gpus_free": 1,
        "gpus_stale": 2, "gpus_warning": 0, "gpus_sick": 0, "gpus_lost": 0,
        "memory_used_mib": 0, "memory_total_mib": 4 * 81920,
    }  # fmt: skip
    assert cluster.rounds == 2 and cluster.ready


@pytest.mark.parametrize(
    ("utilization", "sm_active", "sm_idle"),
    [
        (87, 0.05, True),  # a kernel runs all the time, almost no SM busy
        (87, 0.1, False),  # at the threshold: not nearly idle
        (80, 0.05, False),  # 80 % is not above the busy threshold
        (87, 0.6, False),
        (87, None, False),  # no GPM: cannot be judged
    ],
)
def test_sm_activity_and_busy_but_sm_idle(
    utilization: int, sm_active: float | None, sm_idle: bool
) -> None:
    status = legacy_status("node1", gpus=1)  # GPU 0 with two processes
    status["gpus"][0]["utilize"] = utilization
    readings = {"power": 250.0} if sm_active is None else {"power": 250.0, "sm_active": sm_active}
    result = PollResult(HOST, status, "", time.time(), 0.01, power={0: readings}, processes={})
    cluster = Cluster(thresholds=THRESHOLDS)
    cluster.update([HOST], [result])
    (gpu,) = json.loads(cluster.views.cluster.body)["nodes"][0]["gpus"]
    assert gpu["state"] == "in_use"
    assert gpu["sm_active"] == sm_active
    assert gpu["sm_idle"] is sm_idle


def test_busy_but_sm_idle_uses_the_alerts_figures() -> None:
    """GpuLowSmActivity (prometheus/rules/efficiency.yml) judges with the same two numbers."""
    from pathlib import Path

    import yaml

    from status_api.vocabulary import BUSY_UTILIZATION, LOW_SM_ACTIVITY

    rules = Path(__file__).resolve().parents[2] / "prometheus" / "rules" / "efficiency.yml"
    (alert,) = [
        rule
        for group in yaml.safe_load(rules.read_text())["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "GpuLowSmActivity"
    ]
    assert f"gpu_sm_active_ratio < {LOW_SM_ACTIVITY}" in alert["expr"]
    assert f"gpu_utilization_ratio > {BUSY_UTILIZATION}" in alert["expr"]
