"""The one-command demo, run for real as ``make demo`` runs it.

The demo is a subprocess; the tests read the URLs it prints, check that the status service and
Prometheus see the three simulated nodes, stop it (Ctrl-C, or the end of ``--duration``) and
check that every process it started is gone and its directory removed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from simulator.demo import job_users
from simulator.proc import free_port, wait_until
from simulator.prometheus import find_binary

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
READY_LINE = "Ctrl-C stops the demo."
NODES = {"dgx-a": 8, "dgx-b": 4, "ws-c": 2}  # host name -> GPUs


@dataclass
class Demo:
    """A running demo and what it printed so far."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def output(self) -> str:
        return "\n".join(self.lines)

    def url(self, name: str) -> str:
        """The first URL printed on the line of ``name`` (``status page``, ``dgx-a``, ...)."""
        for line in self.lines:
            match = re.match(rf"\s+{re.escape(name)}\s+(http://\S+)", line)
            if match:
                return match.group(1).rstrip("/")
        raise AssertionError(f"the demo printed no URL for {name!r}:\n{self.output()}")

    def work_directory(self) -> Path:
        for line in self.lines:
            match = re.match(r"\s+files, logs\s+(\S+)", line)
            if match:
                return Path(match.group(1))
        raise AssertionError(f"the demo printed no directory:\n{self.output()}")

    def wait_ready(self, timeout: float = 120.0) -> None:
        if not self.ready.wait(timeout):
            raise AssertionError(f"the demo did not start within {timeout} s:\n{self.output()}")

    def descendants(self) -> dict[int, float]:
        """pid -> start time of every process the demo started (and theirs)."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        return {child.pid: child.create_time() for child in children}

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the demo did not stop within {timeout} s") from None


def _read(demo: Demo) -> None:
    assert demo.process.stdout is not None
    for line in demo.process.stdout:
        demo.lines.append(line.rstrip("\n"))
        if line.strip() == READY_LINE:
            demo.ready.set()
    demo.ready.set()  # it ended: whoever waits should look at the output now


@pytest.fixture
def start_demo() -> Iterator[Any]:
    started: list[Demo] = []

    def start(*args: str) -> Demo:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen(
            [sys.executable, "-m", "simulator.demo", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        demo = Demo(process)
        threading.Thread(target=_read, args=(demo,), daemon=True).start()
        started.append(demo)
        return demo

    yield start
    for demo in started:  # a failed test must not leave the demo running
        if demo.process.poll() is None:
            demo.process.send_signal(signal.SIGTERM)
            try:
                demo.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.process.kill()
                demo.process.wait()


def survivors(processes: dict[int, float]) -> list[str]:
    """The processes of ``processes`` still running (same pid and start time, not a zombie)."""
    alive = []
    for pid, started in processes.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(process.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return alive


def _commands(processes: dict[int, float]) -> list[str]:
    commands = []
    for pid in processes:
        try:
            commands.append(" ".join(psutil.Process(pid).cmdline()))
        except psutil.NoSuchProcess:
            continue
    return commands


def _cluster_complete(url: str) -> dict[str, Any] | None:
    """The cluster document once it shows every node online with its GPUs and all users."""
    document = requests.get(f"{url}/api/v1/cluster", timeout=5).json()
    nodes = {node["hostname"]: node for node in document["nodes"]}
    if set(nodes) != set(NODES) or any(node["state"] != "online" for node in nodes.values()):
        return None
    if any(len(nodes[name]["gpus"]) != count for name, count in NODES.items()):
        return None
    expected_users = {user.name for user in job_users()}
    return document if expected_users <= users_of(document) else None


def users_of(document: dict[str, Any]) -> set[str]:
    return {
        user["username"]
        for node in document["nodes"]
        for gpu in node["gpus"]
        for user in gpu["users"]
    }


def _prometheus_targets_up(url: str) -> list[dict[str, Any]] | None:
    response = requests.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=5)
    targets = response.json()["data"]["activeTargets"]
    healthy = [target for target in targets if target["health"] == "up"]
    return targets if len(targets) == len(NODES) == len(healthy) else None


def test_demo_shows_three_nodes_to_page_and_prometheus_and_ctrl_c_stops_it(start_demo):
    find_binary("prometheus")  # CI installs it: a missing one fails here, it is never skipped
    demo = start_demo("--port", str(free_port()), "--duration", "600")
    demo.wait_ready()
    status = demo.url("status page")

    document = wait_until(
        lambda: _cluster_complete(status), timeout=60, interval=0.5, what="all nodes online"
    )
    assert document["summary"]["nodes_online"] == 3
    assert document["summary"]["gpus_total"] == sum(NODES.values())
    assert len(users_of(document)) >= (3 if os.geteuid() == 0 else 1), users_of(document)
    for name in NODES:
        metrics = requests.get(f"{demo.url(name)}", timeout=5).text
        assert f'hostname="{name}"' in metrics
    prometheus = demo.url("Prometheus").removesuffix("/targets")
    targets = wait_until(
        lambda: _prometheus_targets_up(prometheus), timeout=60, interval=0.5, what="targets up"
    )
    assert {target["labels"]["instance"] for target in targets} == {
        demo.url(name).removeprefix("http://").removesuffix("/metrics") for name in NODES
    }
    find_binary("prometheus-alertmanager")  # installed alongside Prometheus, never skipped
    alertmanager = demo.url("Alertmanager")
    assert requests.get(f"{alertmanager}/-/ready", timeout=5).status_code == 200
    active = wait_until(
        lambda: requests.get(f"{prometheus}/api/v1/alertmanagers", timeout=5).json()["data"][
            "activeAlertmanagers"
        ],
        timeout=60,
        interval=0.5,
        what="Prometheus sending to the demo's Alertmanager",
    )
    assert [a["url"] for a in active] == [f"{alertmanager}/api/v2/alerts"]

    started = demo.descendants()
    commands = _commands(started)
    assert sum(" -m exporter " in command for command in commands) == 3, commands
    assert sum(" -m status_api " in command for command in commands) == 1, commands
    assert sum("prometheus --config.file" in command for command in commands) == 1, commands
    assert sum("alertmanager --config.file" in command for command in commands) == 1, commands
    assert len(started) - 6 >= len(job_users()), commands  # every user keeps a job running

    demo.process.send_signal(signal.SIGINT)
    assert demo.wait_exit() == 0, demo.output()
    assert survivors(started) == []
    assert not demo.work_directory().exists()
    assert "stopped; nothing left running." in demo.output()


def test_demo_on_a_busy_port_picks_another_and_stops_after_its_duration(start_demo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        demo = start_demo("--port", str(busy), "--duration", "4", "--no-prometheus")
        demo.wait_ready()
        started = demo.descendants()
        assert f"port {busy} is busy" in demo.output()
        status = demo.url("status page")
        assert status != f"http://127.0.0.1:{busy}"
        assert requests.get(f"{status}/api/v1/cluster", timeout=5).status_code == 200
        assert demo.wait_exit() == 0, demo.output()
    assert len(started) >= 4, _commands(started)
    assert survivors(started) == []
    assert not demo.work_directory().exists()
