"""Free, in use, idle-held, sick, lost and stale count the same in every view.

One simulated cluster (three real exporters on the fake NVML) holds every kind of GPU:

* node ``localhost`` (node_a with health readings, tests/support/cluster.py, plus a sixth GPU):
  GPU 0 shared by two workers and an unknown owner, busy (a pending row remap: a warning, still in
  use); GPU 1 held by a worker at 0% SM (held without compute from the start: idle-held too);
  GPU 2 free; GPU 3 lost; GPU 4 in MIG mode, one worker on one of its two
  slices (in use: GPUs count whole); GPU 5 sick (XID 79, no process);
* node ``127.0.0.1`` (first port): GPU 0 held at 0% from the start (idle-held once the
  threshold has passed), GPU 1 held and busy until the test stops its compute (held without
  compute for less than the threshold when the views are compared);
* node ``127.0.0.1`` (second port): one free GPU, its exporter stopped (SIGSTOP) so that the node
  is stale.

Every view takes its thresholds from one set of flags: the polling service and the service
reading Prometheus get them on the command line, and ``gpu-status-api thresholds`` writes them
for the rules, loaded by a real Prometheus in place of the shipped thresholds.yml. The idle-held
threshold is shortened to a minute. The counts of the page's JSON (polling and PromQL mode), of
the recording rules (cluster:gpu_<state>:sum) and of ``gpu-status-api report --by cluster`` (mean
GPUs per state over a window in which nothing changed) must all equal the counts worked out by
hand from the scenarios above.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import pytest

from simulator import REPO
from simulator.fakenvml import scenario as fake
from simulator.prometheus import running_prometheus
from tests.support.cluster import node_a, write_thresholds

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

IDLE_HELD_AFTER = 60  # seconds; the default is 1800
# The same flags for every view; stale soon (a stopped exporter), offline never in the test.
THRESHOLDS = ("--stale-after", "8", "--offline-after", "900", "--idle-held-after",
              str(IDLE_HELD_AFTER))  # fmt: skip
WINDOW = 5  # seconds of the report's window, all after the last change of state

# Worked out from the scenarios in the docstring.
EXPECTED = {"free": 1, "in_use": 5, "idle_held": 2, "sick": 1, "lost": 1, "stale": 1}
HELD = 5  # GPUs some process holds memory on: localhost 0, 1, 4 and both of 127.0.0.1's first


def node_held(workers: list[int]) -> fake.FakeScenario:
    """Two GPUs, each held by one worker: GPU 0 at 0%, GPU 1 busy until :func:`stop_compute`."""
    scenario = fake.busy(2, workers, seed=7)
    scenario.gpus[0] = replace(scenario.gpus[0], utilization_gpu=0)
    scenario.gpus[1] = replace(scenario.gpus[1], utilization_gpu=60)
    return scenario


def stop_compute(scenario: fake.FakeScenario) -> fake.FakeScenario:
    return replace(scenario, gpus=[scenario.gpus[0], replace(scenario.gpus[1], utilization_gpu=0)])


def with_sick_gpu(scenario: fake.FakeScenario) -> fake.FakeScenario:
    sick = fake.make_gpu(
        len(scenario.gpus), memory_used=0, utilization_gpu=0, xids=[fake.FakeXid(79)]
    )
    return replace(scenario, gpus=[*scenario.gpus, sick])


def page_counts(document: dict[str, Any]) -> dict[str, int]:
    summary = document["summary"]
    return {state: summary[f"gpus_{state}"] for state in EXPECTED}


def rule_counts(prometheus) -> dict[str, float]:
    return {
        state: float(prometheus.query(f"cluster:gpu_{state}:sum")[0]["value"][1])
        for state in EXPECTED
    }


def run_report(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "status_api", "report", "--prometheus-url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def test_every_view_counts_alike(exporter_factory, worker_pids, tmp_path, status_service_factory):
    local = node_a(worker_pids(4), health=True)
    scenarios = {"a": with_sick_gpu(local), "b": node_held(worker_pids(2)), "c": fake.idle(1)}
    exporters = {name: exporter_factory(scenario) for name, scenario in scenarios.items()}
    # the third node on another port of 127.0.0.1
    hosts_lines = [
        f"localhost:{exporters['a'].port}",
        f"127.0.0.1:{exporters['b'].port}",
        f"127.0.0.1:{exporters['c'].port}",
    ]
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("".join(line + "\n" for line in hosts_lines))
    targets = tmp_path / "targets" / "gpu-nodes.json"
    subprocess.run(
        [sys.executable, "-m", "status_api", "targets", "-c", str(hosts), "-o", str(targets)],
        check=True, timeout=30, capture_output=True,
    )  # fmt: skip
    # the rules' thresholds from the services' flags, by the project's generator
    overrides = {"rules/thresholds.yml": write_thresholds(tmp_path / "thresholds.yml", *THRESHOLDS)}
    stopped = exporters["c"].process.pid
    try:
        with running_prometheus(
            tmp_path / "prometheus", targets_file=targets, rule_overrides=overrides
        ) as prometheus:
            prometheus.wait_for('up{job="gpu"} == 1', lambda result: len(result) == 3)
            polling = status_service_factory(hosts_lines, *THRESHOLDS)
            engine = status_service_factory(
                [], "--prometheus-url", prometheus.url, *THRESHOLDS, password=None
            )
            compare(prometheus, polling, engine, exporters, scenarios, stopped)
            # the same flags for the rules and the service: nothing to warn about
            assert "other thresholds" not in engine.log()
    finally:
        os.kill(stopped, signal.SIGCONT)  # so that it can be stopped


def compare(prometheus, polling, engine, exporters, scenarios, stopped: int) -> None:
    # The GPUs held without compute from the start become idle-held on the page and in the rules.
    timeout = IDLE_HELD_AFTER + 60
    for service in (polling, engine):
        service.wait_for(
            lambda d: d["summary"]["gpus_idle_held"] == 2 and d["summary"]["gpus_sick"] == 1,
            timeout=timeout,
            what="idle-held and sick GPUs",
        )
    prometheus.wait_for(
        "cluster:gpu_idle_held:sum == 2 and cluster:gpu_sick:sum == 1", bool, timeout=30
    )
    # Then a node goes stale and the busy held GPU stops computing.
    os.kill(stopped, signal.SIGSTOP)
    exporters["b"].set_scenario(stop_compute(scenarios["b"]))
    changed = time.time()
    for service in (polling, engine):
        service.wait_for(
            lambda d: d["summary"]["gpus_stale"] == 1 and held_idle_now(d),
            timeout=30,
            what="a stale node and a GPU held without compute",
        )
    prometheus.wait_for(
        "cluster:gpu_stale:sum == 1 and on () count(node_gpu:gpu_held_without_compute:bool) == 3",
        bool,
        timeout=30,
    )
    time.sleep(WINDOW + 1)  # the report's window: only after the last change
    until = time.time()

    views = {
        "polling": page_counts(polling.cluster()),
        "promql": page_counts(engine.cluster()),
        "rules": rule_counts(prometheus),
    }
    report = run_report(
        prometheus.url, "--by", "cluster", "--since", f"{WINDOW}s", "--until", f"{until:.3f}",
        "--format", "json",
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    states = {row["state"]: row["mean_gpus"] for row in json.loads(report.stdout)}
    views["report"] = {state: round(states[state], 1) for state in EXPECTED}
    # The GPU that stopped computing must not have become idle-held meanwhile.
    assert time.time() - changed < IDLE_HELD_AFTER, "too slow to compare before the threshold"
    for view, counts in views.items():
        assert counts == EXPECTED, (view, views)
    assert round(states["held"], 1) == HELD, states
    check_users_report(prometheus.url, until)


def held_idle_now(document: dict[str, Any]) -> bool:
    """Both GPUs of node 127.0.0.1 (first port) are held at 0% utilization."""
    gpus = [
        gpu
        for node in document["nodes"]
        if node["state"] == "online" and node["address"].startswith("127.0.0.1:")
        for gpu in node["gpus"]
    ]
    return len(gpus) == 2 and all(gpu["utilize"] == 0 and gpu["users"] for gpu in gpus)


def check_users_report(url: str, until: float) -> None:
    """Per user, shared GPUs are charged in shares: the users' hours are the held hours."""
    report = run_report(
        url, "--by", "user", "--since", f"{WINDOW}s", "--until", f"{until:.3f}",
        "--format", "json",
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    charged = sum(row["gpu_hours"] for row in json.loads(report.stdout))
    assert round(charged * 3600 / WINDOW, 1) == HELD, report.stdout
    assert "GPU-hours charged" in report.stderr and "do not add up" not in report.stderr
