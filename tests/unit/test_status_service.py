"""The status service's Flask app over a Cluster fed hand-built poll results,: test client."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from simulator.nodes import legacy_status
from status_api.app import MAX_BODY_BYTES, create_app
from status_api.cluster import Cluster, Thresholds
from status_api.hosts import parse_hosts
from status_api.poller import PollResult

pytestmark = pytest.mark.unit

HOSTS = parse_hosts("gpu-a\ngpu-b:7081\n")


def _results(now: float) -> list[PollResult]:
    busy = legacy_status("gpu-a", gpus=2, users_per_gpu=1)  # GPU 0 used, GPU 1 idle
    return [
        PollResult(HOSTS[0], busy, "", now, 0.02, {0: {"power": 250.0, "power_limit": 400.0}}),
        PollResult(HOSTS[1], None, "cannot connect: Connection refused", now, 0.5),
    ]


@pytest.fixture
def cluster() -> Cluster:
    return Cluster(thresholds=Thresholds(stale_after=10, offline_after=30), interval=2.0)


@pytest.fixture
def client(cluster: Cluster) -> FlaskClient:
    return create_app(cluster).test_client()


def _polled(cluster: Cluster) -> None:
    cluster.update(HOSTS, _results(time.time()), 0.6)


def test_ready_only_after_the_first_round(cluster: Cluster, client: FlaskClient) -> None:
    waiting = client.get("/-/ready")
    assert (waiting.status_code, waiting.data) == (503, b"waiting for the first polling round\n")
    assert client.get("/-/healthy").data == b"OK\n"
    _polled(cluster)
    assert (client.get("/-/ready").status_code, client.get("/-/ready").data) == (200, b"OK\n")


def test_cluster_json_has_the_nodes_states_and_summary(
    cluster: Cluster, client: FlaskClient
) -> None:
    _polled(cluster)
    response = client.get("/api/v1/cluster")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Vary"] == "Accept-Encoding"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    document = response.get_json()
    assert document["interval"] == 2.0
    assert document["summary"] == {
        "nodes_total": 2, "nodes_online": 1, "nodes_stale": 0, "nodes_offline": 1,
        "gpus_total": 2, "gpus_in_use": 1, "gpus_idle_held": 0, "gpus_free": 1,
        "gpus_stale": 0, "gpus_warning": 0, "gpus_sick": 0, "gpus_lost": 0,
        "memory_used_mib": 1200, "memory_total_mib": 2 * 81920,
    }  # fmt: skip
    online, offline = document["nodes"]
    assert (online["node"], online["address"], online["state"]) == ("gpu-a", "gpu-a:7080", "online")
    assert [(g["power"], g["power_limit"], g["free"]) for g in online["gpus"]] == [
        (250.0, 400.0, False),
        (None, None, True),
    ]
    assert (offline["node"], offline["address"]) == (
        "gpu-b:7081",
        "gpu-b:7081",
    )  # as hosts.txt has it
    assert (offline["state"], offline["gpus"]) == ("offline", [])
    assert offline["error"] == "cannot connect: Connection refused"


def test_etag_gives_304_until_the_next_round(cluster: Cluster, client: FlaskClient) -> None:
    _polled(cluster)
    first = client.get("/api/v1/cluster")
    etag = first.headers["ETag"]
    unchanged = client.get("/api/v1/cluster", headers={"If-None-Match": etag})
    assert (unchanged.status_code, unchanged.data) == (304, b"")
    _polled(cluster)
    changed = client.get("/api/v1/cluster", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_gzip_when_accepted(cluster: Cluster, client: FlaskClient) -> None:
    _polled(cluster)
    plain = client.get("/api/v1/cluster")
    zipped = client.get("/api/v1/cluster", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.data) == plain.data
    refused = client.get("/api/v1/cluster", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers
    assert refused.data == plain.data


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_legacy_get_status_in_the_old_shape(
    cluster: Cluster, client: FlaskClient, method: str
) -> None:
    _polled(cluster)
    response = client.open("/get-status", method=method)
    assert response.status_code == 200
    document = response.get_json()
    assert list(document) == ["Nodes"]
    first, second = document["Nodes"]
    assert (first["hostname"], first["status"], first["version"]) == (
        "gpu-a",
        True,
        "NVIDIA A100-SXM4-80GB",
    )
    assert first["gpus"][0]["users"][0]["mem(MiB)"] == 1200
    assert second == {"hostname": "gpu-b:7081", "status": False, "gpus": []}


def _errors(response: Any) -> str:
    assert response.mimetype == "application/json"
    return json.loads(response.data)["error"]


def test_unknown_paths_wrong_methods_and_big_bodies(client: FlaskClient) -> None:
    missing = client.get("/api/v2/cluster")
    assert missing.status_code == 404
    assert _errors(missing) == "no such endpoint: /api/v2/cluster"
    wrong = client.post("/api/v1/cluster")
    assert wrong.status_code == 405
    assert set(wrong.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    big = client.post("/get-status", data=b"x" * (MAX_BODY_BYTES + 1))
    assert big.status_code == 413
    assert _errors(big) == f"request body over {MAX_BODY_BYTES} bytes"
    assert client.post("/get-status", data=b"x" * MAX_BODY_BYTES).status_code == 200


def test_page_has_its_security_policy(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert page.headers["X-Frame-Options"] == "DENY"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "Content-Security-Policy" not in client.get("/-/healthy").headers
    page.close()


def test_metrics_report_each_nodes_polls_and_state(cluster: Cluster, client: FlaskClient) -> None:
    _polled(cluster)
    _polled(cluster)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }
    assert samples[("gpu_status_api_node_polls_total", (("node", "gpu-a"),))] == 2.0
    assert samples[("gpu_status_api_node_poll_failures_total", (("node", "gpu-b:7081"),))] == 2.0
    assert samples[("gpu_status_api_node_poll_success", (("node", "gpu-b:7081"),))] == 0.0
    assert samples[("gpu_status_api_node_poll_duration_seconds", (("node", "gpu-b:7081"),))] == 0.5
    state = {
        labels: value for (name, labels), value in samples.items()
        if name == "gpu_status_api_node_state" and value == 1.0
    }  # fmt: skip
    assert state == {
        (("node", "gpu-a"), ("state", "online")): 1.0,
        (("node", "gpu-b:7081"), ("state", "offline")): 1.0,
    }
    assert samples[("gpu_status_api_nodes", (("state", "stale"),))] == 0.0
    assert samples[("gpu_status_api_rounds_total", ())] == 2.0
    assert samples[("gpu_status_api_round_duration_seconds", ())] == 0.6


def test_openapi_is_served_as_json(client: FlaskClient) -> None:
    response = client.get("/api/v1/openapi.json")
    document = response.get_json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/cluster" in document["paths"]
