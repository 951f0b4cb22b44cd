"""Faults, Prometheus mode: real exporters, Prometheus, Alertmanager and a gpu-status-api reading
the cluster with --prometheus-url; all started once for the module, broken one at a time.

Nodes ``localhost`` and ``127.0.0.1`` (tests/support/faults.py ``scenario``: GPU 0 idle but held,
GPU 1 free). Prometheus scrapes and evaluates every second, with the shipped rules (``for:``
shortened to 2 s) and ``--rules.alert.resend-delay=1s`` (the default is 1 minute: how long an
alert waits to be sent again to an Alertmanager that was down); Alertmanager runs the shipped
configuration with 1 s grouping delays and a webhook in this process. The status service: a
round every 0.5 s, stale after 3 s, offline after 5 s, idle but held after 4 s, a state file.

The cases run in file order and each leaves the stack whole for the next.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.alertmanager import AlertmanagerServer, running_alertmanager
from simulator.exporters import ExporterProcess, Workers, start_exporter
from simulator.prometheus import PROMETHEUS_DIR, PrometheusServer, running_prometheus
from tests.support.cluster import write_targets
from tests.support.faults import (
    DEFAULT_ENGINE_OUTAGE,
    ENGINE_OUTAGE_ENV,
    ScrapeLoad,
    gpus_of,
    restart_until_ready,
    scenario,
    seconds_until,
)
from tests.support.status_service import StatusService, node
from tests.support.webhook import Webhook, firing

pytestmark = [pytest.mark.faults, pytest.mark.prometheus]

NODES = ("localhost", "127.0.0.1")
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
WINDOW = "10m"  # longer than the module: every query below sees all of its samples


@dataclass
class Stack:
    exporters: dict[str, ExporterProcess]
    workers: dict[str, int]
    prometheus: PrometheusServer
    alertmanager: AlertmanagerServer
    webhook: Webhook
    service: StatusService
    state_path: Path


@pytest.fixture(scope="module")
def stack(
    fake_nvml: Path, tmp_path_factory: pytest.TempPathFactory, module_status_service_factory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("faults-engine")
    with ExitStack() as resources:
        pids = resources.enter_context(Workers()).start(len(NODES))
        workers = dict(zip(NODES, pids))
        exporters = {}
        for name, pid in workers.items():
            exporter = start_exporter(fake_nvml, workdir / name, scenario(pid, xids=2))
            resources.callback(exporter.stop)
            exporters[name] = exporter
        targets = write_targets(workdir, {name: e.port for name, e in exporters.items()})
        webhook = resources.enter_context(Webhook())
        alertmanager = resources.enter_context(
            running_alertmanager(workdir / "alertmanager", webhook_url=webhook.url)
        )
        prometheus = resources.enter_context(
            running_prometheus(
                workdir / "prometheus",
                targets_file=targets,
                alertmanagers=[alertmanager.address],
                extra_args=["--rules.alert.resend-delay=1s"],
            )
        )
        prometheus.wait_for('up{job="gpu"} == 1', lambda result: len(result) == 2)
        state_path = workdir / "state.json"
        service = module_status_service_factory(
            [], "--prometheus-url", prometheus.url, "--stale-after", "3", "--offline-after", "5",
            "--idle-held-after", "4", "--power-interval", "0", "--state-file", str(state_path),
        )  # fmt: skip
        yield Stack(exporters, workers, prometheus, alertmanager, webhook, service, state_path)


def all_online(document: dict[str, Any]) -> bool:
    nodes = document["nodes"]
    return (
        len(nodes) == len(NODES)
        and document["error"] == ""
        and all(n["state"] == "online" and len(n["gpus"]) == 2 for n in nodes)
    )


# ---------------------------------------------------------------- counters in rules


RESET_AWARE = {"rate", "irate", "increase", "resets"}
_CALL = re.compile(r"([a-z_]+)\s*$")
_COUNTER = re.compile(r"\b(gpu_[a-z0-9_]+_total)\b")
# After a counter outside rate() & co.: its labels, an offset, then only a comparison with a
# number or a set operator: a test for presence or for a count above a threshold, never a
# difference that a reset would make negative.
_SAFE_AFTER = re.compile(
    r"^(\{[^}]*\})?(\s+offset\s+\w+)?\s*(([<>]=?|==|!=)\s*[0-9.]+|unless\b|and\b|or\b|\)|$)"
)


def _enclosing_calls(expr: str, index: int) -> list[str]:
    """The functions (or "" for plain parentheses) whose argument lists hold ``index``."""
    stack: list[str] = []
    for position, char in enumerate(expr[:index]):
        if char == "(":
            call = _CALL.search(expr[:position])
            stack.append(call.group(1) if call else "")
        elif char == ")" and stack:
            stack.pop()
    return stack


def counter_misuses(expr: str) -> list[str]:
    """The uses of exporter counters in ``expr`` that a counter reset would turn negative."""
    misuses = []
    for match in _COUNTER.finditer(expr):
        calls = _enclosing_calls(expr, match.start())
        if RESET_AWARE & set(calls):
            continue
        before = expr[: match.start()].rstrip()
        if before.endswith(("-", "+", "*", "/")) or not _SAFE_AFTER.match(expr[match.end() :]):
            misuses.append(f"{match.group(1)} in {' '.join(expr.split())[:200]}")
    return misuses


def test_the_rule_check_finds_a_difference_of_counters() -> None:
    assert counter_misuses("gpu_energy_joules_total - gpu_energy_joules_total offset 1h")
    assert counter_misuses("delta(gpu_xid_errors_total[10m]) > 0")
    assert not counter_misuses("increase(gpu_xid_errors_total{xid='79'}[10m]) > 0")


def test_every_rule_treats_exporter_counters_as_resettable() -> None:
    """Exporter counters start over when the exporter restarts (XIDs) or the driver reloads
    (energy, ECC): every rule reads them through rate(), increase() or resets(), or only
    compares them with a constant."""
    rules = {
        rule.get("record") or rule["alert"]: rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }
    # The energy split reads the counter's growth itself, one evaluation at a time, and takes a
    # reading below the last one as a reset (the growth is then the new reading): its own test
    # (tests/test_energy_rules.py) restarts an exporter mid-run and checks the joules.
    growth = " ".join(rules.pop(ENERGY_GROWTH).split())
    assert ">= 0 or on (instance, node, gpu, uuid) ( max by" in growth, growth
    rules.pop(ENERGY_LAST)
    expressions = list(rules.values())
    assert any(_COUNTER.search(expr) for expr in expressions)
    misuses = [misuse for expr in expressions for misuse in counter_misuses(expr)]
    assert misuses == []


ENERGY_GROWTH = "node_gpu:gpu_energy_joules:increase"
ENERGY_LAST = "node_gpu:gpu_energy_joules:last"


def _recorded_names() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / "recording.yml").read_text())
    return [rule["record"] for group in rules["groups"] for rule in group["rules"]]


# ---------------------------------------------------------------- exporter killed


def test_exporter_killed_and_restarted(stack: Stack, fault_timings) -> None:
    case = "exporter SIGKILL (Prometheus mode)"
    prometheus, service = stack.prometheus, stack.service
    exporter, worker = stack.exporters["localhost"], stack.workers["localhost"]
    xids = 'gpu_xid_errors_total{node="localhost"}'
    prometheus.wait_for(f"{xids} == 2", lambda result: len(result) == 1)
    before = service.wait_for(all_online, timeout=15, what="all online")
    identity = gpus_of(before, "localhost")

    with ScrapeLoad(f"{exporter.url}/metrics", clients=4) as load:
        seconds_until(lambda: load.counts()[0] > 40, timeout=10, what="scrapes under way")
        exporter.process.kill()
        offline = seconds_until(
            lambda: node(service.cluster(), "localhost")["state"] == "offline",
            timeout=15,
            what="offline",
        )
        fault_timings.record(case, "page offline after kill", offline)
        assert "up == 0" in node(service.cluster(), "localhost")["error"]
        # The driver was reloaded meanwhile: energy starts over, and the restarted exporter
        # counts XIDs from zero (one this time): both counters go down.
        exporter.set_scenario(scenario(worker, energy=1_000, xids=1))
        ready = restart_until_ready(exporter.process, f"{exporter.url}/-/ready")
        fault_timings.record(case, "exporter ready after start", ready)
        assert ready < 2.0, f"serving again {ready:.2f} s after start"
        prometheus.wait_for(f"{xids} == 1", lambda result: len(result) == 1)
        online = seconds_until(
            lambda: (
                gpus_of(service.cluster(), "localhost") == identity
                and node(service.cluster(), "localhost")["state"] == "online"
            ),
            timeout=10,
            what="online again",
        )
        fault_timings.record(case, "page online after start", ready + online)

    selector = '{node="localhost",__name__=~"gpu_energy_joules_total|gpu_xid_errors_total"}'
    # The reset is in the data: a plain difference of the counters is negative ...
    resets = prometheus.values(f"resets({selector}[{WINDOW}])")
    assert len(resets) == 3 and min(resets.values()) >= 1
    assert max(prometheus.values(f"delta({selector}[{WINDOW}])").values()) < 0
    # ... but what the project reads is not.
    for function in ("rate", "increase", "irate"):
        assert min(prometheus.values(f"{function}({selector}[{WINDOW}])").values()) >= 0
    # Every recorded series, at every evaluation around the restart, is 0 or more.
    lowest = {
        name: [v for v in prometheus.values(f"min_over_time({name}[{WINDOW}])").values()]
        for name in _recorded_names()
    }
    assert sum(bool(values) for values in lowest.values()) > 20, lowest
    assert [name for name, values in lowest.items() if values and min(values) < 0] == []
    report = subprocess.run(
        [sys.executable, "-m", "status_api", "report", "--prometheus-url", prometheus.url,
         "--since", WINDOW, "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = json.loads(report.stdout)
    assert rows, report.stdout
    for row in rows:
        numbers = [row[key] for key in ("gpu_hours", "mean_utilization", "idle_held_hours")]
        assert all(number is None or number >= 0 for number in numbers), row


# ---------------------------------------------------------------- status service killed


def test_status_service_killed_keeps_idle_held_periods(stack: Stack, fault_timings) -> None:
    case = "status service SIGKILL (Prometheus mode, --state-file)"
    service = stack.service
    held = service.wait_for(
        lambda d: all_online(d) and node(d, "127.0.0.1")["gpus"][0]["idle_held"],
        timeout=15,
        what="idle but held",
    )
    since = node(held, "127.0.0.1")["gpus"][0]["idle_held_since"]
    service.process.kill()
    ready = restart_until_ready(service.process, f"{service.url}/-/ready")
    first = service.cluster()
    fault_timings.record(case, "page whole after start (first round)", ready)
    assert all_online(first), first
    gpu = node(first, "127.0.0.1")["gpus"][0]
    assert (gpu["idle_held"], gpu["idle_held_since"]) == (True, since)


# ---------------------------------------------------------------- Prometheus down


def test_prometheus_down_then_back(stack: Stack, fault_timings) -> None:
    outage = float(os.environ.get(ENGINE_OUTAGE_ENV, DEFAULT_ENGINE_OUTAGE))
    case = f"Prometheus down {outage:g} s (Prometheus mode)"
    prometheus, service = stack.prometheus, stack.service
    before = service.wait_for(all_online, timeout=15, what="all online")
    prometheus.process.kill()
    killed = time.monotonic()
    banner = seconds_until(lambda: service.cluster()["error"], timeout=10, what="banner")
    fault_timings.record(case, "banner after kill", banner)
    down = service.cluster()
    assert prometheus.url in down["error"]
    for name in NODES:  # the last state stays, with its GPUs
        assert gpus_of(down, name) == gpus_of(before, name)
    assert service.get("/-/ready").status_code == 200
    assert service.get("/").status_code == 200

    time.sleep(max(0.0, outage - (time.monotonic() - killed)))
    late = service.cluster()
    assert late["error"] and all(gpus_of(late, name) for name in NODES)
    ready = restart_until_ready(prometheus.process, f"{prometheus.url}/-/ready", timeout=60)
    fault_timings.record(case, "Prometheus ready after start", ready)
    whole = seconds_until(lambda: all_online(service.cluster()), timeout=20, what="whole again")
    fault_timings.record(case, "page whole after Prometheus start", ready + whole)
    assert "answers again" in service.log()


# ---------------------------------------------------------------- Alertmanager killed


def test_alertmanager_killed_loses_no_notification(stack: Stack, fault_timings) -> None:
    case = "Alertmanager SIGKILL"
    webhook, alertmanager = stack.webhook, stack.alertmanager
    early = firing("GpuHot", "127.0.0.1", "1")
    stack.exporters["127.0.0.1"].set_scenario(scenario(stack.workers["127.0.0.1"], hot=True))
    webhook.wait_for(early, timeout=60)
    notified_before = webhook.notifications(early)

    alertmanager.process.kill()
    # An alert that starts firing while Alertmanager is down.
    late = firing("GpuHot", "localhost", "1")
    stack.exporters["localhost"].set_scenario(scenario(stack.workers["localhost"], hot=True))
    seconds_until(
        lambda: any(
            a["labels"].get("alertname") == "GpuHot"
            and a["labels"].get("node") == "localhost"
            and a["state"] == "firing"
            for a in stack.prometheus.alerts()
        ),
        timeout=30,
        what="GpuHot firing on localhost",
    )
    ready = restart_until_ready(alertmanager.process, f"{alertmanager.url}/-/ready")
    fault_timings.record(case, "Alertmanager ready after start", ready)
    delivered = seconds_until(lambda: webhook.notifications(late), timeout=30, what="delivered")
    fault_timings.record(case, "alert fired while down delivered after start", ready + delivered)
    time.sleep(5)  # five group intervals and resends: room for a storm
    assert webhook.notifications(late) == 1
    # The notification log lives in --storage.path but is saved every 15 minutes and at a clean
    # stop: after SIGKILL, a group notified since then may be notified once more, never more.
    repeats = webhook.notifications(early) - notified_before
    fault_timings.record(case, "repeated notifications of a group notified before", repeats)
    assert repeats <= 1

    # A clean restart (SIGTERM, as systemd does) keeps the log: nothing is sent again.
    counts = _notification_counts(webhook)
    alertmanager.process.kill(signal.SIGTERM)
    restart_until_ready(alertmanager.process, f"{alertmanager.url}/-/ready")
    time.sleep(5)
    assert _notification_counts(webhook) == counts


def _notification_counts(webhook: Webhook) -> dict[tuple[str, str, str], int]:
    counts: dict[tuple[str, str, str], int] = {}
    for post in list(webhook.posts):
        for alert in post["alerts"]:
            labels = alert["labels"]
            key = (labels.get("alertname", ""), labels.get("node", ""), alert["status"])
            counts[key] = counts.get(key, 0) + 1
    return counts
