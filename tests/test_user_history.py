"""``GET /api/v1/users/<name>/history`` against a real Prometheus holding days of counters of
known shape.

Each user's counters grow at a constant rate within each UTC day (the rate changes only at
midnight), sampled every STEP seconds, so the increase over a day is the day's rate times its
length whatever Prometheus' window boundaries and extrapolation: the expected values are
computed from the rates by hand. The service's clock is set to 06:00 UTC of the day before
yesterday, so the last day is a partial one of six hours and the head of Prometheus never
touches the data. Hostile names are checked against a fake engine that records every query.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any, ClassVar

import pytest
import schemathesis
from flask.testing import FlaskClient

from simulator import REPO
from simulator.proc import free_port
from simulator.prometheus import backfilled_prometheus
from status_api.app import create_app
from status_api.cluster import Cluster
from status_api.engine import EngineSettings
from status_api.userhistory import UserHistory, query
from tests.support.status_service import (  # noqa: F401 - fixture
    StatusService,
    status_service_factory,
)

SPEC = schemathesis.openapi.from_path(REPO / "status_api" / "openapi.yaml")
STEP = 300
DAY = 86400
# 06:00 UTC of the day before yesterday: well behind Prometheus' head, whatever the time now.
CLOCK = (int(time.time()) // DAY - 1) * DAY - 18 * 3600
TODAY = CLOCK // DAY * DAY
START = TODAY - 9 * DAY  # two days of data before the seven asked
ENERGY_FROM = TODAY - 3 * DAY  # the energy counter starts at a midnight: null before

# Per day from START (index 0) to today (index 9): GPUs held, their utilization, watts.
Day = tuple[float, float, float]
ALICE_A: list[Day] = [
    (2, 0.5, 400.0), (0, 0.0, 0.0), (4, 0.25, 900.0), (1, 1.0, 300.0), (0, 0.0, 0.0),
    (3, 0.75, 600.0), (2, 0.125, 250.0), (8, 0.5, 2000.0), (1, 0.0, 80.0), (2, 0.5, 500.0),
]  # fmt: skip
# A second site's series of the same user: the answer sums them.
ALICE_B: list[Day] = [(1, 0.5, 100.0)] * 10
BOB: list[Day] = [(6, 1.0, 1500.0)] * 10


def _rates(day: int, days: list[Day]) -> tuple[float, float, float]:
    gpus, utilization, watts = days[day]
    return gpus, gpus * utilization, watts


def _counter_values(days: list[Day], which: int) -> list[tuple[int, float]]:
    """(timestamp, value) of one counter every STEP from START to CLOCK; the energy counter
    (which == 2) only from ENERGY_FROM."""
    first = ENERGY_FROM if which == 2 else START
    values, total = [], 0.0
    for t in range(first, CLOCK + 1, STEP):
        if t > first:
            total += _rates((t - 1 - START) // DAY, days)[which] * STEP
        values.append((t, total))
    return values


def _openmetrics() -> str:
    series = [
        ({"user": "alice", "cluster": "a"}, ALICE_A),
        ({"user": "alice", "cluster": "b"}, ALICE_B),
        ({"user": "bob", "cluster": "a"}, BOB),
    ]
    lines = []
    for which, name in enumerate(
        ("user:gpu_seconds:total", "user:gpu_utilization_seconds:total",
         "user:gpu_energy_joules:total")
    ):  # fmt: skip
        for labels, days in series:
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines += [f"{name}{{{text}}} {v!r} {t}" for t, v in _counter_values(days, which)]
    return "\n".join([*lines, "# EOF"]) + "\n"


def expected(*series: list[Day], days: int = 7) -> list[dict[str, Any]]:
    """The answer by hand: each day's rates times its length, summed over the user's series."""
    rows = []
    for offset in range(days - 1, -1, -1):
        start = TODAY - offset * DAY
        length = min(DAY, CLOCK - start)
        index = (start - START) // DAY
        gpu, util, watts = (sum(_rates(index, s)[k] for s in series) * length for k in range(3))
        rows.append(
            {
                "date": datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y-%m-%d"),
                "start": start,
                "end": start + length,
                "gpu_hours": gpu / 3600,
                "mean_utilization": util / gpu if gpu else None,
                "energy_kwh": watts / 3.6e6 if start >= ENERGY_FROM else None,
            }
        )
    return rows


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with backfilled_prometheus(
        tmp_path_factory.mktemp("history-prometheus"),
        _openmetrics(),
        ready="count(last_over_time(user:gpu_seconds:total[12d]))",
        count=3,
    ) as prometheus:
        yield prometheus.url


def _client(url: str, *, ttl: float = 60.0) -> FlaskClient:
    history = UserHistory(settings=lambda: EngineSettings(url=url), ttl=ttl, clock=lambda: CLOCK)
    return create_app(Cluster(), user_history=history).test_client()


def _compare(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [day["date"] for day in got] == [day["date"] for day in want]
    for got_day, want_day in zip(got, want):
        for key, value in want_day.items():
            if value is None or isinstance(value, str):
                assert got_day[key] == value, (want_day["date"], key)
            else:
                assert math.isclose(got_day[key], value, rel_tol=1e-6, abs_tol=1e-9), (
                    want_day["date"], key, got_day[key], value,
                )  # fmt: skip


@pytest.mark.prometheus
def test_per_day_values_match_the_hand_computed_ones(prometheus_url: str) -> None:
    client = _client(prometheus_url)
    response = client.get("/api/v1/users/alice/history?days=7")
    assert response.status_code == 200, response.get_json()
    SPEC["/api/v1/users/{name}/history"]["GET"].validate_response(response)
    document = response.get_json()
    assert document["user"] == "alice" and document["configured"] is True
    assert document["message"] == ""
    _compare(document["days"], expected(ALICE_A, ALICE_B))
    # the last day is today so far: six hours
    assert document["days"][-1]["end"] - document["days"][-1]["start"] == 6 * 3600
    _compare(client.get("/api/v1/users/bob/history").get_json()["days"], expected(BOB))
    _compare(
        client.get("/api/v1/users/alice/history?days=9").get_json()["days"],
        expected(ALICE_A, ALICE_B, days=9),
    )


@pytest.mark.prometheus
def test_the_service_with_an_engine_answers_from_it(
    prometheus_url: str,
    status_service_factory: Callable[..., StatusService],  # noqa: F811
) -> None:
    """The real command line wires the endpoint to --prometheus-url (with the real clock: the
    data end two days back, within the 7 days)."""
    service = status_service_factory([], "--prometheus-url", prometheus_url)
    response = service.get("/api/v1/users/alice/history")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["configured"] is True and len(document["days"]) == 7
    assert any(day["gpu_hours"] for day in document["days"])
    assert service.get("/api/v1/users/carol/history").status_code == 404
    assert service.get("/api/v1/users/a%22%7D/history").status_code == 404


@pytest.mark.prometheus
def test_a_user_the_engine_has_never_seen_is_404(prometheus_url: str) -> None:
    response = _client(prometheus_url).get("/api/v1/users/carol/history")
    assert response.status_code == 404
    assert "carol" in response.get_json()["error"]


@pytest.mark.parametrize("days", ["0", "32", "-1", "x", "7.5", "9" * 40])
def test_a_bad_days_parameter_is_400(days: str) -> None:
    response = create_app(Cluster()).test_client().get(f"/api/v1/users/alice/history?days={days}")
    assert response.status_code == 400


def test_without_an_engine_the_history_is_empty_with_a_message() -> None:
    response = create_app(Cluster()).test_client().get("/api/v1/users/alice/history")
    assert response.status_code == 200
    SPEC["/api/v1/users/{name}/history"]["GET"].validate_response(response)
    document = response.get_json()
    assert document["configured"] is False and document["days"] == []
    assert "--prometheus-url" in document["message"]


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A query engine that records every query and answers each with one sample of 3600."""

    asked: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        from urllib.parse import parse_qs

        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        type(self).asked.append(form["query"][0])
        sample = {"metric": {}, "value": [0, "3600"]}
        body = {"status": "success", "data": {"resultType": "vector", "result": [sample]}}
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _recording_engine() -> Iterator[str]:
    _Recorder.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


HOSTILE = [
    'a"}',
    'x"} or vector(1) or {a="',
    "a{b}",
    "a'b",
    "a\\b",
    "a b",
    "a\nb",
    "é",
    "-leading-dash",
    ".hidden",
    "a/b",
    "a" * 65,
    "a" * 5000,
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_before_the_engine(name: str) -> None:
    from urllib.parse import quote

    with _recording_engine() as url:
        response = _client(url).get(f"/api/v1/users/{quote(name, safe='')}/history")
    assert response.status_code in (400, 404), name
    assert "error" in response.get_json()
    assert _Recorder.asked == []


def test_valid_names_reach_the_engine_quoted_and_are_cached() -> None:
    with _recording_engine() as url:
        client = _client(url)
        for _ in range(3):
            assert client.get("/api/v1/users/o.brien-2$@x/history").status_code == 200
    # one round of queries (7 days, 3 counters), then the cache
    assert len(_Recorder.asked) == 21
    assert all('{user="o.brien-2$@x"}' in expr for expr in _Recorder.asked)
    assert (
        query("gpu_seconds", 'a"b', 86400)
        == 'sum(increase(user:gpu_seconds:total{user="a\\"b"}[86400s]))'
    )


def test_names_the_service_does_not_know_never_reach_the_engine() -> None:
    """In the service, only the users of /api/v1/users are asked about: guessing names costs the
    engine nothing."""
    known = {"alice"}
    with _recording_engine() as url:
        settings = EngineSettings(url=url)
        history = UserHistory(settings=lambda: settings, clock=lambda: CLOCK, known=lambda: known)
        client = create_app(Cluster(), user_history=history).test_client()
        for guess in ("bob", "root", "admin", "carol.x"):
            assert client.get(f"/api/v1/users/{guess}/history").status_code == 404
        assert _Recorder.asked == []
        assert client.get("/api/v1/users/alice/history").status_code == 200
    assert len(_Recorder.asked) == 21


def test_an_engine_that_is_down_is_503_and_not_cached() -> None:
    client = _client(f"http://127.0.0.1:{free_port()}")
    for _ in range(2):
        response = client.get("/api/v1/users/alice/history")
        assert response.status_code == 503
        assert "query engine" in response.get_json()["error"]
        assert response.headers["Retry-After"] == "30"
