"""GPU use per user, Slurm job and namespace (``/api/v1/users``), from hand-built poll results.

The node answers and their ``/metrics`` texts come from the simulator, so attribution travels
the same way as from a real node; GPU-hours are handed in as a :class:`History`, or fetched with
the report's client from an address where nothing listens.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from simulator.nodes import legacy_status, metrics_text
from simulator.proc import free_port
from status_api.cluster import Cluster, Thresholds
from status_api.hosts import parse_hosts
from status_api.nodemetrics import parse_metrics
from status_api.poller import PollResult
from status_api.report import EngineSettings
from status_api.usage import History, UsageHistory, fetch_history, held_now, users_document

pytestmark = pytest.mark.unit

HOSTS = parse_hosts("gpu-a\ngpu-b\ngpu-c\n")
THRESHOLDS = Thresholds(stale_after=1e10, offline_after=1e10, idle_held_after=100)


def _gpu_a() -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """GPU 0: alice twice (one job) and bob; GPU 1: alice (another job) and a process without
    an owner; GPU 2: bob in namespace ml; GPU 3: unused."""
    status = legacy_status("gpu-a", gpus=4, users_per_gpu=0)
    users = {
        0: [(100, "alice", 1000), (101, "alice", 500), (102, "bob", 2000)],
        1: [(110, "alice", 4000), (111, "", 300)],
        2: [(120, "bob", 8000)],
    }
    for index, processes in users.items():
        status["gpus"][index]["users"] = [
            {"pid": pid, "username": name, "mem(MiB)": mib, "command": "python x.py"}
            for pid, name, mib in processes
        ]
        status["gpus"][index]["utilize"] = 50
    attribution = {
        100: {"slurm_job": "7001", "sm_utilization": 0.0},
        101: {"slurm_job": "7001", "sm_utilization": 0.0},
        102: {"sm_utilization": 0.0},
        110: {"slurm_job": "7002", "sm_utilization": 0.5},
        111: {"sm_utilization": 0.5},
        120: {"namespace": "ml", "pod": "train-0", "sm_utilization": 0.0},
    }
    return status, attribution


def _result(host: int, status: dict[str, Any], attribution: dict, at: float) -> PollResult:
    metrics = parse_metrics(metrics_text(status, attribution))
    return PollResult(
        HOSTS[host], status, "", at, 0.01, metrics.power, metrics.processes, metrics.uuids
    )


def _cluster(history: History | None = None) -> Cluster:
    """gpu-a as above (GPUs 0 and 2 idle-held after the second round), gpu-b where carol holds
    one GPU, gpu-c offline with a GPU of dave's from an old answer."""
    cluster = Cluster(
        thresholds=THRESHOLDS, interval=2.0, usage_history=(lambda: history) if history else None
    )
    status, attribution = _gpu_a()
    carol = legacy_status("gpu-b", gpus=2, users_per_gpu=1)
    carol["gpus"][0]["users"][0]["username"] = "carol"
    dave = legacy_status("gpu-c", gpus=1, users_per_gpu=1)
    dave["gpus"][0]["users"][0]["username"] = "dave"
    for at in (1000.0, 1100.0):
        results = [_result(0, status, attribution, at), _result(1, carol, {}, at)]
        if at == 1000.0:
            results.append(_result(2, dave, {}, at - 1e11))  # long gone: offline
        cluster.update(HOSTS, results)
    return cluster


def _users(cluster: Cluster) -> dict[str, Any]:
    return json.loads(cluster.views.users.body)


def _rows(document: dict[str, Any], name: str, label: str) -> dict[str, tuple]:
    return {
        row[label]: (row["gpus"], row["memory_mib"], row["idle_held_gpus"])
        for row in document[name]
    }


def test_a_gpu_counts_once_per_group_with_the_memory_of_its_processes() -> None:
    document = _users(_cluster())
    assert _rows(document, "users", "user") == {
        "alice": (2, 5500, 1),  # GPU 0 (two processes, idle-held) and GPU 1 (computing)
        "bob": (2, 10000, 2),
        "carol": (1, 1200, 0),
        "": (1, 300, 0),  # owner unknown: a group of its own
    }  # dave's node is offline: what it held is not known now
    assert _rows(document, "slurm_jobs", "slurm_job") == {
        "7001": (1, 1500, 1),  # both processes on one GPU
        "7002": (1, 4000, 0),
    }
    assert _rows(document, "namespaces", "namespace") == {"ml": (1, 8000, 1)}


def test_lists_are_sorted_by_gpus_held_then_gpu_hours() -> None:
    history = History(
        configured=True,
        hours={"user": {w: {"carol": 50.0, "erin": 3.0} for w in ("1d", "7d", "30d")}},
        updated_at=1100.0,
    )
    users = [row["user"] for row in _users(_cluster(history))["users"]]
    assert users == ["alice", "bob", "carol", "", "erin"]


def test_gpu_hours_null_without_an_engine_and_zero_where_it_answered_without_a_group() -> None:
    plain = _users(_cluster())
    assert plain["gpu_hours"] == {
        "configured": False, "windows": ["1d", "7d", "30d"], "updated_at": None, "error": "",
    }  # fmt: skip
    assert all(
        row["gpu_hours"] == {"1d": None, "7d": None, "30d": None}
        for name in ("users", "slurm_jobs", "namespaces")
        for row in plain[name]
    )
    history = History(
        configured=True,
        hours={
            "user": {"1d": {"alice": 1.5}, "7d": {"alice": 10.25}, "30d": {"alice": 40.0}},
            "slurm_job": {"1d": {}, "7d": {}, "30d": {"": 2.0}},
        },
        updated_at=1234.5,
    )
    document = _users(_cluster(history))
    users = {row["user"]: row["gpu_hours"] for row in document["users"]}
    assert users["alice"] == {"1d": 1.5, "7d": 10.25, "30d": 40.0}
    assert users["bob"] == {"1d": 0.0, "7d": 0.0, "30d": 0.0}  # answered, no time recorded
    jobs = {row["slurm_job"]: row["gpu_hours"] for row in document["slurm_jobs"]}
    assert "" not in jobs  # GPU time outside any job is no job
    namespaces = {row["namespace"]: row["gpu_hours"] for row in document["namespaces"]}
    assert namespaces["ml"] == {"1d": None, "7d": None, "30d": None}  # not answered
    assert document["gpu_hours"]["updated_at"] == 1234.5


def test_a_group_with_past_gpu_time_only_is_listed_with_nothing_held() -> None:
    history = History(configured=True, hours={"namespace": {"30d": {"nlp": 7.0}}})
    rows = _users(_cluster(history))["namespaces"]
    assert rows[-1] == {
        "namespace": "nlp", "gpus": 0, "memory_mib": 0, "idle_held_gpus": 0, "gpu_share": 0,
        "gpu_hours": {"1d": None, "7d": None, "30d": 7.0},
    }  # fmt: skip


def test_held_now_skips_offline_nodes_and_unknown_memory() -> None:
    nodes = [
        {"state": "stale", "gpus": [
            {"idle_held": False, "users": [{"username": "x", "mem": None, "slurm_job": "",
                                            "namespace": ""}]},
        ]},
        {"state": "offline", "gpus": [
            {"idle_held": True, "users": [{"username": "x", "mem": 10, "slurm_job": "1",
                                           "namespace": ""}]},
        ]},
    ]  # fmt: skip
    groups = held_now(nodes)
    # unknown memory holds nothing: listed, but charged no share
    assert vars(groups["users"]["x"]) == {
        "gpus": 1, "memory_mib": 0, "idle_held_gpus": 0, "gpu_share": 0,
    }  # fmt: skip
    assert groups["slurm_jobs"] == {}


def test_a_failed_refresh_leaves_null_with_the_error() -> None:
    settings = EngineSettings(url=f"http://127.0.0.1:{free_port()}", timeout=2)
    history = fetch_history(settings, at=1000.0)
    assert history.configured and history.hours == {} and history.updated_at == 1000.0
    assert history.error.startswith(settings.url + ": ")
    assert "refused" in history.error.lower()
    document = users_document([], history, generated_at=1000.0, interval=2.0)
    assert document["gpu_hours"]["error"] == history.error
    assert document["users"] == []


def test_a_settings_error_is_a_failed_refresh_too() -> None:
    def unreadable() -> EngineSettings:
        raise OSError("cannot read the password file \x1b[2J")

    history = UsageHistory(settings=unreadable)
    assert history().error == "waiting for the first answer"
    refreshed = history.refresh_now()
    assert refreshed.error == "cannot read the password file ?[2J"  # no terminal escapes
    assert history() is refreshed and refreshed.hours == {}
