"""``gpu-status-api report`` against a real Prometheus holding days of counters of known shape.

The counters that the recording rules would have written (``user:gpu_seconds:total`` and its
siblings in recording.yml, efficiency.yml and energy.yml, ``namespace:gpu_seconds:total`` and
``namespace:gpu_energy_joules:total``) are generated here step by step, backfilled with
``promtool tsdb create-blocks-from openmetrics`` and served by a real Prometheus. The expected
report is summed from the generated increments, not from the counters, so Prometheus'
``increase()`` (resets, a group split over two sites) is checked too. Argument and connection
errors run the real command against small servers in the test.
"""

from __future__ import annotations

import contextlib
import csv
import http.server
import io
import json
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from simulator.proc import free_port
from simulator.prometheus import backfilled_prometheus
from tests.support.status_service import run_command

STEP = 300  # seconds between generated samples, the evaluation interval of the "rules"
DAYS = 4
# The window end: a whole hour, three hours back, so Prometheus' head (and the rules it
# evaluates) never touches the generated data, and every window starts on a sample.
END = (int(time.time()) // 3600 - 3) * 3600
START = END - DAYS * 86400
STEPS = DAYS * 86400 // STEP


@dataclass
class Series:
    """One generated group: the increments of its counters at every step after the first.

    ``resets`` are steps where the series restarts at 0 (a Prometheus restart): their increment
    is lost, as it would be in reality. ``watts`` (per held GPU) gives the group energy counters,
    ``sm_active`` (of every held GPU, all with GPM) SM-activity counters; without them the group
    has none, as where the energy rules are not loaded or no GPU of the group has GPM.
    """

    labels: dict[str, str]
    gpus: list[int]
    utilization: list[float]  # of every held GPU at that step (binary fractions: exact sums)
    resets: set[int] = field(default_factory=set)
    watts: list[float] | None = None
    sm_active: list[float] | None = None

    def increments(self) -> dict[str, list[float]]:
        gpu = [0.0] + [self.gpus[k] * STEP for k in range(1, STEPS + 1)]
        util = [0.0] + [self.gpus[k] * self.utilization[k] * STEP for k in range(1, STEPS + 1)]
        idle = [0.0] + [
            self.gpus[k] * STEP if self.utilization[k] < 0.05 else 0.0 for k in range(1, STEPS + 1)
        ]
        result = {
            "gpu_seconds": gpu,
            "gpu_utilization_seconds": util,
            "gpu_idle_held_seconds": idle,
        }
        if self.watts is not None:
            watts = self.watts
            result["gpu_energy_joules"] = [0.0] + [
                self.gpus[k] * watts[k] * STEP for k in range(1, STEPS + 1)
            ]
        if self.sm_active is not None:
            sm = self.sm_active
            result["gpu_gpm_held_seconds"] = list(gpu)
            result["gpu_sm_active_seconds"] = [0.0] + [
                self.gpus[k] * sm[k] * STEP for k in range(1, STEPS + 1)
            ]
        for k in self.resets:
            for increments in result.values():
                increments[k] = 0.0
        return result

    def counters(self) -> dict[str, list[float]]:
        result = {}
        for name, increments in self.increments().items():
            values, total = [], 0.0
            for k, increment in enumerate(increments):
                total = 0.0 if k in self.resets else total + increment
                values.append(total)
            result[name] = values
        return result


def _pattern(period: int, values: list[float]) -> list[float]:
    return [values[(k // period) % len(values)] for k in range(STEPS + 1)]


USERS = [
    # alice works on two sites; one group in the report. Only site a's GPUs have GPM: her SM
    # activity is the mean over those.
    Series(
        {"user": "alice", "cluster": "a"},
        _pattern(7, [4, 2, 0, 8]),
        _pattern(5, [0.5, 0]),
        watts=_pattern(5, [400.0, 100.0]),
        sm_active=_pattern(5, [0.25, 0.0]),
    ),
    Series(
        {"user": "alice", "cluster": "b"},
        _pattern(11, [1, 3]),
        _pattern(3, [0.75, 0.25]),
        watts=_pattern(3, [300.0, 200.0]),
    ),
    # bob stops after the first day and a half: nothing in a 2d window.
    Series(
        {"user": "bob", "cluster": "a"},
        [2 if k < STEPS * 3 // 8 else 0 for k in range(STEPS + 1)],
        _pattern(9, [0.0, 0.5]),
    ),
    # carol's Prometheus restarted twice, once within every window below.
    Series(
        {"user": "carol", "cluster": "a"},
        _pattern(13, [1, 1, 0, 2]),
        _pattern(4, [0.125, 0.875, 0.0]),
        resets={STEPS // 2, STEPS - 40},
        watts=_pattern(4, [350.0, 500.0, 75.0]),
        sm_active=_pattern(4, [0.0625, 0.5, 0.0]),
    ),
    # dave: 2 GPUs at 250 W and 50 % SM activity all along, for numbers worked out by hand.
    Series(
        {"user": "dave", "cluster": "a"},
        _pattern(1, [2]),
        _pattern(1, [0.5]),
        watts=_pattern(1, [250.0]),
        sm_active=_pattern(1, [0.5]),
    ),
    # gina: 1 GPU at 200 W and 25 % SM activity, her counters reset 100 steps before the end.
    Series(
        {"user": "gina", "cluster": "a"},
        _pattern(1, [1]),
        _pattern(1, [0.5]),
        resets={STEPS - 100},
        watts=_pattern(1, [200.0]),
        sm_active=_pattern(1, [0.25]),
    ),
    # processes whose owner could not be read: no user label; its GPUs have no GPM.
    Series(
        {"cluster": "a"},
        _pattern(17, [0, 1]),
        _pattern(2, [0.0, 0.25]),
        watts=_pattern(2, [60.0, 150.0]),
    ),
]
NAMESPACES = [
    Series(
        {"namespace": "vision", "cluster": "a"},
        _pattern(5, [3, 1]),
        _pattern(1, [0.5]),
        watts=_pattern(2, [300.0, 100.0]),
    ),
    Series({"namespace": "nlp", "cluster": "a"}, _pattern(19, [0, 6, 2]), _pattern(1, [0.5])),
]


def _openmetrics() -> str:
    """Every counter of every series, a family at a time (OpenMetrics forbids interleaving)."""
    families: dict[str, list[str]] = {}
    for by, groups, counters in (
        ("user", USERS, None),
        ("namespace", NAMESPACES, ("gpu_seconds", "gpu_energy_joules")),  # no others recorded
    ):
        for series in groups:
            values = series.counters()
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(series.labels.items()))
            for counter in values:
                if counters is not None and counter not in counters:
                    continue
                name = f"{by}:{counter}:total"
                families.setdefault(name, []).extend(
                    f"{name}{{{labels}}} {value!r} {START + k * STEP}"
                    for k, value in enumerate(values[counter])
                )
    lines = [line for family in families.values() for line in family]
    return "\n".join([*lines, "# EOF"]) + "\n"


def expected(groups: list[Series], by: str, *, since: int, with_ratios: bool) -> dict[str, dict]:
    """The report computed by hand: increments of the steps after the window's first sample."""
    first = (END - since - START) // STEP
    sums: dict[str, dict[str, float]] = {}
    for series in groups:
        key = series.labels.get(by, "")
        total = sums.setdefault(key, {})
        for name, increments in series.increments().items():
            total[name] = total.get(name, 0.0) + sum(increments[first + 1 :])
    return {
        key: {
            "gpu_hours": total["gpu_seconds"] / 3600,
            "mean_utilization": total["gpu_utilization_seconds"] / total["gpu_seconds"]
            if with_ratios
            else None,
            "idle_held_hours": total["gpu_idle_held_seconds"] / 3600 if with_ratios else None,
            "energy_kwh": total["gpu_energy_joules"] / 3.6e6
            if "gpu_energy_joules" in total
            else None,
            "mean_sm_activity": total["gpu_sm_active_seconds"] / total["gpu_gpm_held_seconds"]
            if with_ratios and total.get("gpu_gpm_held_seconds")
            else None,
        }
        for key, total in sums.items()
        if total["gpu_seconds"] > 0
    }


def run_report(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_command("report", *args, timeout=timeout)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with backfilled_prometheus(
        tmp_path_factory.mktemp("report-prometheus"),
        _openmetrics(),
        ready=f"count(last_over_time(user:gpu_seconds:total[{DAYS + 1}d]))",
        count=len(USERS),
    ) as prometheus:
        yield prometheus.url


def _compare(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert set(got) == set(want)
    for key, values in want.items():
        for name, value in values.items():
            if value is None:
                assert got[key][name] is None, (key, name)
            else:
                assert math.isclose(got[key][name], value, rel_tol=1e-9), (key, name, got[key])


COLUMNS = ("gpu_hours", "mean_utilization", "idle_held_hours", "energy_kwh", "mean_sm_activity")
BY_USER_AND_NAMESPACE = [("user", USERS, True), ("namespace", NAMESPACES, False)]
RFC3339_END = datetime.fromtimestamp(END, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("by", "groups", "since", "seconds", "with_ratios"),
    [
        ("user", USERS, "2d", 2 * 86400, True),
        ("user", USERS, "3d", 3 * 86400, True),
        ("namespace", NAMESPACES, "36h", 36 * 3600, False),
    ],
)
def test_json_matches_the_sums_of_the_generated_data(
    prometheus_url, by, groups, since, seconds, with_ratios
):
    result = run_report(
        "--prometheus-url", prometheus_url, "--since", since, "--until", str(END),
        "--by", by, "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    want = expected(groups, by, since=seconds, with_ratios=with_ratios)
    got = {row.pop(by): row for row in document}
    _compare(got, want)
    assert [row["gpu_hours"] for row in document] == sorted(
        (row["gpu_hours"] for row in document), reverse=True
    )
    if by == "user" and since == "2d":
        assert "bob" not in got  # stopped before the window: left out, not a row of zeros
        assert "" in got  # the unknown owner is a group of its own


@pytest.mark.prometheus
@pytest.mark.parametrize(("by", "groups", "with_ratios"), BY_USER_AND_NAMESPACE)
def test_csv_has_a_header_and_the_same_numbers(prometheus_url, by, groups, with_ratios):
    result = run_report(
        "--prometheus-url", prometheus_url, "--since", "2d", "--until", RFC3339_END,
        "--by", by, "--format", "csv",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert result.stdout.splitlines()[0] == f"{by},{','.join(COLUMNS)}"
    got = {
        row[by]: {name: float(row[name]) if row[name] else None for name in COLUMNS} for row in rows
    }
    _compare(got, expected(groups, by, since=2 * 86400, with_ratios=with_ratios))


@pytest.mark.prometheus
@pytest.mark.parametrize(("by", "groups", "with_ratios"), BY_USER_AND_NAMESPACE)
def test_table_is_aligned_and_sorted_by_gpu_hours(prometheus_url, by, groups, with_ratios):
    result = run_report(
        "--prometheus-url", prometheus_url, "--since", "2d", "--until", str(END), "--by", by,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == by.upper().replace("_", " ").split()[0]
    assert len({len(line) for line in lines}) == 1, result.stdout  # aligned columns
    want = sorted(
        expected(groups, by, since=2 * 86400, with_ratios=with_ratios).items(),
        key=lambda item: (-item[1]["gpu_hours"], item[0]),
    )
    assert len(lines) == len(want) + 1
    for line, (key, values) in zip(lines[1:], want):
        cells = line.rsplit(None, 5)
        assert cells[0].strip() == (key or "(unknown)")
        assert cells[1] == f"{values['gpu_hours']:.2f}"
        if with_ratios:
            assert cells[2] == f"{values['mean_utilization'] * 100:.1f}%"
            assert cells[3] == f"{values['idle_held_hours']:.2f}"
        else:
            assert cells[2:4] == ["-", "-"]
        energy, sm = values["energy_kwh"], values["mean_sm_activity"]
        assert cells[4] == ("-" if energy is None else f"{energy:.3f}")
        assert cells[5] == ("-" if sm is None else f"{sm * 100:.1f}%")


@pytest.mark.prometheus
def test_energy_cost_co2_and_sm_activity_worked_out_by_hand(prometheus_url):
    result = run_report(
        "--prometheus-url", prometheus_url, "--since", "2d", "--until", str(END),
        "--format", "json", "--price-per-kwh", "0.25", "--co2-grams-per-kwh", "400",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = {row.pop("user"): row for row in json.loads(result.stdout)}
    # dave: 2 GPUs x 48 h = 96 GPU-hours; 2 x 250 W x 172800 s = 86.4 MJ = 24 kWh, which at
    # 0.25 a kWh cost 6 and at 400 g/kWh emit 9.6 kg of CO2; SM activity 50 %.
    assert got["dave"]["gpu_hours"] == pytest.approx(96, rel=1e-9)
    assert got["dave"]["energy_kwh"] == pytest.approx(24, rel=1e-9)
    assert got["dave"]["cost"] == pytest.approx(6, rel=1e-9)
    assert got["dave"]["co2_kg"] == pytest.approx(9.6, rel=1e-9)
    assert got["dave"]["mean_sm_activity"] == pytest.approx(0.5, rel=1e-9)
    # gina: the step her counters reset in is lost, 172800 - 300 s held: 47.9166 GPU-hours;
    # 200 W x 172500 s = 34.5 MJ = 9.58333 kWh, costing 2.39583 and emitting 3.83333 kg; her
    # SM activity stays 25 %, the lost step gone from both of its counters.
    assert got["gina"]["gpu_hours"] == pytest.approx(172500 / 3600, rel=1e-9)
    assert got["gina"]["energy_kwh"] == pytest.approx(9.583333333, rel=1e-9)
    assert got["gina"]["cost"] == pytest.approx(2.395833333, rel=1e-9)
    assert got["gina"]["co2_kg"] == pytest.approx(3.833333333, rel=1e-9)
    assert got["gina"]["mean_sm_activity"] == pytest.approx(0.25, rel=1e-9)
    # No GPU of the unknown owner has GPM: no mean, not 0.
    assert got[""]["mean_sm_activity"] is None and got[""]["energy_kwh"] > 0
    want = expected(USERS, "user", since=2 * 86400, with_ratios=True)
    for key, row in got.items():
        assert set(row) == {*COLUMNS, "cost", "co2_kg"}
        assert math.isclose(row["energy_kwh"], want[key]["energy_kwh"], rel_tol=1e-9), key
        assert math.isclose(row["cost"], want[key]["energy_kwh"] * 0.25, rel_tol=1e-9), key
        assert math.isclose(row["co2_kg"], want[key]["energy_kwh"] * 0.4, rel_tol=1e-9), key


@pytest.mark.prometheus
def test_cost_columns_only_when_priced_and_empty_without_energy(prometheus_url):
    common = ["--prometheus-url", prometheus_url, "--since", "36h", "--until", str(END)]
    result = run_report(*common, "--by", "namespace", "--format", "csv", "--price-per-kwh", "0.3")
    assert result.returncode == 0, result.stderr
    rows = {row["namespace"]: row for row in csv.DictReader(io.StringIO(result.stdout))}
    assert result.stdout.splitlines()[0] == f"namespace,{','.join(COLUMNS)},cost"
    assert rows["nlp"]["energy_kwh"] == rows["nlp"]["cost"] == ""  # no energy series
    assert float(rows["vision"]["cost"]) == pytest.approx(
        float(rows["vision"]["energy_kwh"]) * 0.3, rel=1e-9
    )
    table = run_report(*common, "--co2-grams-per-kwh", "0").stdout.splitlines()
    assert table[0].split()[-2:] == ["CO2", "KG"] and "COST" not in table[0]
    assert len({len(line) for line in table}) == 1


@pytest.mark.prometheus
def test_a_grouping_without_counters_reports_nothing_and_says_why(prometheus_url):
    result = run_report("--prometheus-url", prometheus_url, "--by", "slurm_job", "--format=json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert "slurm_job:gpu_seconds:total" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "30days"], "--since '30days' is not a Prometheus duration"),
        (["--since", "0d"], "must be longer than 0"),
        (["--since", ""], "is not a Prometheus duration"),
        (["--until", "yesterday"], "--until 'yesterday' is neither"),
        (["--until", "2024-06-01T00:00:00"], "needs a time zone"),
        (["--by", "group"], "invalid choice: 'group'"),
        (["--format", "xml"], "invalid choice: 'xml'"),
        (["--prometheus-url", "ftp://host"], "must be http:// or https://"),
        (["--prometheus-url", "http://u:p@host:9090"], "must not hold credentials"),
        (["--prometheus-url", "http://host:99999"], "has a bad port"),
        (["--prometheus-ca-file", "/nonexistent"], "needs an https://"),
        (["--prometheus-basic-auth-user", "u"], "go together"),
        (["--prometheus-timeout", "0"], "--prometheus-timeout"),
        (["--price-per-kwh", "-1"], "--price-per-kwh: '-1' must be 0 or more"),
        (["--price-per-kwh", "nan"], "'nan' is not a finite number"),
        (["--co2-grams-per-kwh", "inf"], "'inf' is not a finite number"),
        (["--co2-grams-per-kwh", "lots"], "'lots' is not a number"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(arguments, message):
    url = ["--prometheus-url", "http://127.0.0.1:9"]
    if "--prometheus-url" in arguments:
        url = []
    result = run_report(*url, *arguments)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr


def test_missing_ca_file_and_password_file_exit_2(tmp_path):
    https = ["--prometheus-url", "https://127.0.0.1:9"]
    result = run_report(*https, "--prometheus-ca-file", str(tmp_path / "ca.pem"))
    assert result.returncode == 2
    assert "no such file" in result.stderr
    result = run_report(
        *https, "--prometheus-basic-auth-user", "u",
        "--prometheus-basic-auth-password-file", str(tmp_path / "missing"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "--prometheus-basic-auth-password-file" in result.stderr


def test_unreachable_engine_exits_1():
    result = run_report("--prometheus-url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot query http://127.0.0.1:" in result.stderr


class _Hostile(http.server.BaseHTTPRequestHandler):
    """Answers a redirect, a body over the cap, a slow drip or a Prometheus error by path."""

    def do_GET(self) -> None:
        with contextlib.suppress(OSError):  # the client gave up, as it should
            self._answer()
        self.close_connection = True

    do_POST = do_GET  # the client posts its queries; a real engine answers both methods

    def _answer(self) -> None:
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "http://elsewhere.example/api/v1/query")
            self.end_headers()
        elif self.path.startswith("/big/"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status":"success","data":{"resultType":"vector","result":[')
            self.wfile.write(b" " * 2_000_000)
        elif self.path.startswith("/drip/"):
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"status":"error","errorType":"bad_data","error":"parse error"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hostile_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("path", "options", "message"),
    [
        ("/redirect", [], "redirect to 'http://elsewhere.example/api/v1/query', not followed"),
        ("/big", ["--prometheus-max-body-bytes", "1000000"], "over the 1000000 byte cap"),
        ("/drip", ["--prometheus-timeout", "1"], "timeout"),
        ("/error", [], "query failed: parse error"),
    ],
)
def test_hostile_or_failing_engine_exits_1(hostile_url, path, options, message):
    started = time.monotonic()
    result = run_report("--prometheus-url", hostile_url + path, *options)
    assert result.returncode == 1, result
    assert message in result.stderr, result.stderr
    if path == "/drip":  # 10 s of drip; the 1 s timeout covers the whole answer
        assert time.monotonic() - started < 6
