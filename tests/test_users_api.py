"""``GET /api/v1/users`` from the real gpu-status-api: over simulated nodes, and with GPU-hours
from a real Prometheus holding backfilled ``user:gpu_seconds:total`` counters.

The Prometheus data are the report's (tests/test_usage_report.py); the expected GPU-hours are
computed from the generated counters with Prometheus' own ``increase()`` extrapolation at the
evaluation time the service reports (``gpu_hours.updated_at``).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis

from simulator import REPO
from simulator.nodes import FakeNodes, legacy_status
from simulator.proc import free_port, wait_until
from tests.support.status_service import (  # noqa: F401 - fixture
    StatusService,
    status_service_factory,
)
from tests.test_usage_report import (  # noqa: F401 - fixture
    END,
    NAMESPACES,
    START,
    STEP,
    USERS,
    Series,
    prometheus_url,
)

SPEC = schemathesis.openapi.from_path(REPO / "status_api" / "openapi.yaml")


def _node_status(hostname: str, users: list[list[tuple[int, str, int]]]) -> dict[str, Any]:
    status = legacy_status(hostname, gpus=len(users), users_per_gpu=0)
    for gpu, processes in zip(status["gpus"], users):
        gpu["users"] = [
            {"pid": pid, "username": name, "mem(MiB)": mib, "command": "python train.py"}
            for pid, name, mib in processes
        ]
        gpu["use_mem"] = sum(mib for _, _, mib in processes)
        if not processes:
            gpu["utilize"] = 0  # unused and idle: free, not in use

    return status


@pytest.fixture
def nodes() -> Iterator[FakeNodes]:
    """Two nodes: alice has two processes on one GPU of each (job 9001 on both), bob one GPU
    in namespace ml; one GPU of each node is unused."""
    with FakeNodes(["ok", "ok"], gpus=3) as fake:
        fake.set_status(
            0,
            _node_status(
                "n0", [[(100, "alice", 1000), (101, "alice", 3000)], [], [(102, "bob", 500)]]
            ),
            attribution={
                100: {"slurm_job": "9001"},
                101: {"slurm_job": "9001"},
                102: {"namespace": "ml", "pod": "nb-0"},
            },
        )
        fake.set_status(
            1,
            _node_status("n1", [[], [(200, "alice", 2000)], []]),
            attribution={200: {"slurm_job": "9001"}},
        )
        yield fake


def test_users_jobs_and_namespaces_over_simulated_nodes(
    nodes: FakeNodes,
    status_service_factory,  # noqa: F811
) -> None:
    service = status_service_factory(nodes.hosts_lines(), "--power-interval", "0")
    service.wait_for(
        lambda d: (
            d["summary"]["gpus_in_use"] == 3
            and any(u["slurm_job"] for n in d["nodes"] for g in n["gpus"] for u in g["users"])
        ),
        what="attribution read",
    )
    response = service.get("/api/v1/users")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    SPEC["/api/v1/users"]["GET"].validate_response(response)
    document = response.json()
    assert list(document) == [
        "generated_at", "interval", "gpu_hours", "users", "slurm_jobs", "namespaces",
    ]  # fmt: skip
    assert document["gpu_hours"] == {
        "configured": False, "windows": ["1d", "7d", "30d"], "updated_at": None, "error": "",
    }  # fmt: skip
    none = {"1d": None, "7d": None, "30d": None}
    assert document["users"] == [
        {
            "user": "alice",
            "gpus": 2,
            "memory_mib": 6000,
            "idle_held_gpus": 0,
            "gpu_share": 2,
            "gpu_hours": none,
        },
        {
            "user": "bob",
            "gpus": 1,
            "memory_mib": 500,
            "idle_held_gpus": 0,
            "gpu_share": 1,
            "gpu_hours": none,
        },
    ]
    assert [(j["slurm_job"], j["gpus"], j["memory_mib"]) for j in document["slurm_jobs"]] == [
        ("9001", 2, 6000)
    ]
    assert [(n["namespace"], n["gpus"]) for n in document["namespaces"]] == [("ml", 1)]

    # Cached bytes with the round's ETag, gzip when accepted, 304 for a matching tag.
    etag = response.headers["ETag"]
    cluster_etag = service.get("/api/v1/cluster").headers["ETag"]
    assert etag.rsplit("-", 1)[0] == cluster_etag.rsplit("-", 1)[0]  # one instance, one sequence
    again = service.get("/api/v1/users", headers={"If-None-Match": etag})
    assert again.status_code in (200, 304)  # 200 only if a round passed in between
    if again.status_code == 304:
        assert again.content == b"" and again.headers["ETag"] == etag
    zipped = service.get("/api/v1/users", headers={"Accept-Encoding": "gzip"}, stream=True)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(zipped.raw.read()).startswith(b'{"generated_at":')

    # A process that ends frees its group's GPU in the next rounds.
    nodes.set_status(1, _node_status("n1", [[], [], []]), attribution={})
    document = service.wait_for(lambda d: d["summary"]["gpus_in_use"] == 2, what="GPU released")
    users = {u["user"]: u["gpus"] for u in service.get("/api/v1/users").json()["users"]}
    assert users == {"alice": 1, "bob": 1}


def test_an_unreachable_engine_leaves_gpu_hours_null_with_the_error(
    status_service_factory,  # noqa: F811
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    service = status_service_factory([], "--prometheus-url", url)

    def failed() -> dict[str, Any] | None:
        document = service.get("/api/v1/users").json()
        return document if document["gpu_hours"]["updated_at"] is not None else None

    document = wait_until(failed, timeout=20, interval=0.2, what="a GPU-hours refresh")
    assert document["gpu_hours"]["configured"] is True
    assert document["gpu_hours"]["error"].startswith(url + ": ")
    assert "refused" in document["gpu_hours"]["error"].lower()
    assert document["users"] == [] and document["slurm_jobs"] == []
    assert service.get("/-/ready").status_code == 200  # the service itself carries on


# ---- GPU-hours from a real Prometheus ----------------------------------------------------------


def _increase(times: list[int], values: list[float], *, start_ms: int, end_ms: int) -> float | None:
    """Prometheus 2.x ``increase()`` of one counter over [start, end] (milliseconds): counter
    resets corrected, then extrapolated to the range's edges as promql/functions.go does."""
    points = [(t, v) for t, v in zip(times, values) if start_ms <= t <= end_ms]
    if len(points) < 2:
        return None
    result = points[-1][1] - points[0][1]
    for (_, before), (_, after) in zip(points, points[1:]):
        if after < before:
            result += before
    to_start = (points[0][0] - start_ms) / 1000
    to_end = (end_ms - points[-1][0]) / 1000
    sampled = (points[-1][0] - points[0][0]) / 1000
    average = sampled / (len(points) - 1)
    if result > 0 and points[0][1] >= 0:
        to_start = min(to_start, sampled * (points[0][1] / result))
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return result * (interval / sampled)


def _expected_hours(groups: list[Series], by: str, *, at: float, seconds: int) -> dict[str, float]:
    end_ms = round(at * 1000)
    sums: dict[str, float] = {}
    for series in groups:
        counter = series.counters()["gpu_seconds"]
        times = [(START + k * STEP) * 1000 for k in range(len(counter))]
        value = _increase(times, counter, start_ms=end_ms - seconds * 1000, end_ms=end_ms)
        if value is not None:
            key = series.labels.get(by, "")
            sums[key] = sums.get(key, 0.0) + value / 3600
    return sums


@pytest.mark.prometheus
def test_gpu_hours_from_prometheus(
    prometheus_url: str,  # noqa: F811
    status_service_factory,  # noqa: F811
) -> None:
    service = status_service_factory([], "--prometheus-url", prometheus_url)

    def answered() -> dict[str, Any] | None:
        document = service.get("/api/v1/users").json()
        return document if document["gpu_hours"]["updated_at"] is not None else None

    response_document = wait_until(answered, timeout=30, interval=0.2, what="GPU-hours")
    assert response_document["gpu_hours"]["error"] == "", response_document["gpu_hours"]
    SPEC["/api/v1/users"]["GET"].validate_response(service.get("/api/v1/users"))
    at = response_document["gpu_hours"]["updated_at"]
    assert at > END  # the windows end now; the data end a few hours back
    windows = {"1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
    for name, by, groups in (("users", "user", USERS), ("namespaces", "namespace", NAMESPACES)):
        rows = {row[by]: row for row in response_document[name]}
        for window, seconds in windows.items():
            want = _expected_hours(groups, by, at=at, seconds=seconds)
            for key, hours in want.items():
                got = rows[key]["gpu_hours"][window]
                assert math.isclose(got, hours, abs_tol=6e-4), (name, key, window, got, hours)
        assert all(row["gpus"] == 0 for row in rows.values())  # nothing scraped holds a GPU now
    users = {row["user"]: row["gpu_hours"] for row in response_document["users"]}
    assert users["bob"]["1d"] == 0.0 and users["bob"]["30d"] > 0  # stopped days ago
    assert "" in users  # the unknown owner, as in the report
    assert response_document["slurm_jobs"] == []  # no job counters recorded
    order = [row["gpu_hours"]["30d"] for row in response_document["users"]]
    assert order == sorted(order, reverse=True)  # nothing held: by 30-day GPU-hours
