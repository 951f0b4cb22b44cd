"""Faults, polling mode: real exporters on the fake NVML and a real gpu-status-api polling them.

Each case breaks one thing for real (SIGKILL, a driver gone in the fake NVML, a full file system,
an edited hosts.txt), checks what a user of the page sees meanwhile, and measures how long until
everything is whole again (``fault_timings``: build/artifacts/faults.json, the numbers of
docs/faults.md). The status service runs with short settings: a round every 0.5 s, stale after
1.5 s, offline after 3 s, idle but held after 4 s, /metrics read every round.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from simulator.fakenvml import scenario as fake
from simulator.metrics import value, values
from tests.support.faults import (
    ScrapeLoad,
    gpus_of,
    restart_until_ready,
    scenario,
    seconds_until,
)
from tests.support.status_service import node

pytestmark = pytest.mark.faults

NVML_ERROR_DRIVER_NOT_LOADED = 9
IDLE_HELD_AFTER = 4.0
FLAGS = (
    "--stale-after", "1.5", "--offline-after", "3", "--idle-held-after", str(IDLE_HELD_AFTER),
    "--power-interval", "0",
)  # fmt: skip


def state_of(service: Any, text: str) -> str:
    return str(node(service.cluster(), text)["state"])


@pytest.fixture
def worker(worker_pids) -> int:
    return int(worker_pids(1)[0])


def test_exporter_killed_under_scrape_load_comes_back(
    exporter_factory, status_service_factory, worker, fault_timings
):
    case = "exporter SIGKILL (polling)"
    exporter = exporter_factory(scenario(worker))
    entry = f"127.0.0.1:{exporter.port}"
    service = status_service_factory([entry], *FLAGS)
    before = service.wait_for(lambda d: node(d, entry)["state"] == "online", what="online")
    identity = gpus_of(before, entry)
    assert len(identity) == 2

    with ScrapeLoad(f"{exporter.url}/metrics", clients=4) as load:
        seconds_until(lambda: load.counts()[0] > 40, timeout=10, what="scrapes under way")
        exporter.process.kill()
        stale = seconds_until(lambda: state_of(service, entry) == "stale", timeout=5, what="stale")
        offline = seconds_until(
            lambda: state_of(service, entry) == "offline", timeout=10, what="offline"
        )
        fault_timings.record(case, "page stale after kill", stale)
        fault_timings.record(case, "page offline after kill", stale + offline)
        down = service.cluster()
        assert "cannot connect" in node(down, entry)["error"]
        assert gpus_of(down, entry) == identity  # the last known GPUs stay listed
        failed_scrapes = load.counts()[1]
        assert failed_scrapes > 0, "the scrapers never noticed the kill"

        ready = restart_until_ready(exporter.process, f"{exporter.url}/-/ready")
        metrics_back = ready + seconds_until(
            lambda: values(exporter.metrics(), "gpu_up") == [1, 1], timeout=5, what="gpu_up"
        )
        fault_timings.record(case, "exporter ready after start", ready)
        fault_timings.record(case, "exporter metrics with every GPU after start", metrics_back)
        assert metrics_back < 2.0, f"serving again {metrics_back:.2f} s after start"

        online = seconds_until(
            lambda: state_of(service, entry) == "online", timeout=5, what="online again"
        )
        fault_timings.record(case, "page online after restart", metrics_back + online)
        ok_then = load.counts()[0]
        seconds_until(lambda: load.counts()[0] > ok_then + 40, timeout=10, what="scrapes again")
    after = service.cluster()
    assert gpus_of(after, entry) == identity
    assert node(after, entry)["error"] == ""


def test_status_service_killed_keeps_idle_held_periods(
    exporter_factory, status_service_factory, worker, tmp_path, fault_timings
):
    case = "status service SIGKILL (polling, --state-file)"
    exporter = exporter_factory(scenario(worker))
    entry = f"127.0.0.1:{exporter.port}"
    state_path = tmp_path / "state" / "state.json"
    state_path.parent.mkdir()
    service = status_service_factory([entry], *FLAGS, "--state-file", str(state_path))
    held = service.wait_for(
        lambda d: node(d, entry)["gpus"][0]["idle_held"], timeout=15, what="idle but held"
    )
    since = node(held, entry)["gpus"][0]["idle_held_since"]
    assert _idle_held_gpus(service) == 1
    assert json.loads(state_path.read_text())["nodes"][0]["idle_since"]

    service.process.kill()
    ready = restart_until_ready(service.process, f"{service.url}/-/ready")
    # Ready means one round is done: the page is whole at that round, not later.
    first = service.cluster()
    fault_timings.record(case, "page whole after start (first round)", ready)
    assert node(first, entry)["state"] == "online"
    assert gpus_of(first, entry) == gpus_of(held, entry)
    gpu = node(first, entry)["gpus"][0]
    assert (gpu["idle_held"], gpu["idle_held_since"]) == (True, since)
    assert _idle_held_gpus(service) == 1

    # Without the state file, the same restart forgets the period: the GPU is not idle-held
    # again before --idle-held-after has passed once more.
    forgetful = status_service_factory([entry], *FLAGS)
    gpu = node(forgetful.cluster(), entry)["gpus"][0]
    assert gpu["idle_held"] is False and gpu["users"]


def _idle_held_gpus(service: Any) -> int:
    users = service.get("/api/v1/users").json()["users"]
    return sum(user["idle_held_gpus"] for user in users)


class Unwritable:
    """A directory whose writes can be made to fail and succeed again: a full 256 KiB tmpfs
    where mounting is allowed (root), else a directory without write permission."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.full_disk = False
        self._filler: Path | None = None

    def mount(self) -> bool:
        if os.geteuid() != 0:
            return False
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(self.directory)],
            capture_output=True,
            check=False,
        )
        self.full_disk = mounted.returncode == 0
        return self.full_disk

    def unmount(self) -> None:
        if self.full_disk:
            subprocess.run(["umount", "-l", str(self.directory)], check=False)

    @property
    def error(self) -> str:
        return "No space left on device" if self.full_disk else "Permission denied"

    def break_writes(self) -> None:
        if not self.full_disk:
            self.directory.chmod(0o500)
            return
        self._filler = self.directory / "filler"
        handle = os.open(self._filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(handle, b"\0" * 4096):
                pass
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
        finally:
            os.close(handle)

    def repair(self) -> None:
        if self._filler is not None:
            self._filler.unlink()
            self._filler = None
        self.directory.chmod(0o700)


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Unwritable]:
    directory = tmp_path / "state"
    directory.mkdir()
    place = Unwritable(directory)
    if not place.mount() and os.geteuid() == 0:
        pytest.skip("root ignores permissions and cannot mount a tmpfs here")
    try:
        yield place
    finally:
        try:
            place.repair()
        finally:
            place.unmount()


def test_full_disk_under_the_state_file(
    exporter_factory, status_service_factory, worker, unwritable, fault_timings
):
    case = "full disk under the state file"
    exporter = exporter_factory(scenario(worker, busy=True))
    entry = f"127.0.0.1:{exporter.port}"
    state_path = unwritable.directory / "state.json"
    service = status_service_factory([entry], *FLAGS, "--state-file", str(state_path))
    seconds_until(state_path.exists, timeout=5, what="first state file")
    unwritable.break_writes()

    exporter.set_scenario(scenario(worker))  # GPU 0 becomes idle but held: the state changes
    seconds_until(lambda: _write_failures(service) >= 4, timeout=10, what="failed writes")
    assert service.log().count("cannot write the state file") == 1, service.log()[-2000:]
    assert unwritable.error in service.log()
    # Serving as before, rounds going on, the state only in memory.
    assert service.get("/-/ready").status_code == 200
    assert node(service.cluster(), entry)["state"] == "online"
    assert json.loads(state_path.read_text())["nodes"] == []
    assert not [p for p in unwritable.directory.iterdir() if p.name.endswith(".tmp")]

    unwritable.repair()
    written = seconds_until(
        lambda: json.loads(state_path.read_text())["nodes"], timeout=5, what="state written"
    )
    fault_timings.record(case, "state file written after space is freed", written)
    assert "written again" in service.log()


def _write_failures(service: Any) -> float:
    text = service.get("/metrics").text
    return value(text, "gpu_status_api_state_file_write_failures_total")


def test_hosts_edited_while_polling(
    exporter_factory, status_service_factory, worker_pids, tmp_path, fault_timings
):
    case = "hosts.txt edited while polling"
    first_worker, second_worker = worker_pids(2)
    first = exporter_factory(scenario(first_worker))
    second = exporter_factory(scenario(second_worker, busy=True))
    one, two = f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"
    state_path = tmp_path / "state.json"
    service = status_service_factory([one], *FLAGS, "--state-file", str(state_path))
    seconds_until(lambda: _state_ports(state_path) == {first.port}, timeout=5, what="state")

    service.write_hosts(f"{one}\n{two}\n")
    added = seconds_until(lambda: state_of(service, two) == "online", timeout=5, what="added")
    fault_timings.record(case, "added node online after the edit", added)
    assert state_of(service, one) == "online"

    service.write_hosts(f"{two}\n")
    removed = seconds_until(
        lambda: [n["node"] for n in service.cluster()["nodes"]] == [two], timeout=5, what="gone"
    )
    fault_timings.record(case, "removed node gone after the edit", removed)
    # Its idle-held period goes with it, from the state file too.
    seconds_until(lambda: _state_ports(state_path) == set(), timeout=5, what="state dropped")

    service.write_hosts(f"{two}\nnot a host line !\n")  # broken: the last good list stays
    broken = f"{service.hosts_path.name}:2"
    seconds_until(lambda: broken in service.log(), timeout=5, what="the broken line logged")
    assert [n["node"] for n in service.cluster()["nodes"]] == [two]
    assert state_of(service, two) == "online"


def _state_ports(path: Path) -> set[int]:
    try:
        return {entry["port"] for entry in json.loads(path.read_text())["nodes"]}
    except FileNotFoundError:
        return {-1}


def test_nvml_gone_and_back_on_a_node(
    exporter_factory, status_service_factory, worker, fault_timings
):
    case = "NVML gone and back (driver reload)"
    healthy = scenario(worker, busy=True)
    exporter = exporter_factory(healthy)
    entry = f"127.0.0.1:{exporter.port}"
    service = status_service_factory([entry], *FLAGS)
    before = service.wait_for(lambda d: node(d, entry)["state"] == "online", what="online")
    identity = gpus_of(before, entry)

    unloaded = dataclasses.replace(
        healthy,
        fail={
            "nvmlDeviceGetCount_v2": NVML_ERROR_DRIVER_NOT_LOADED,
            "nvmlInitWithFlags": NVML_ERROR_DRIVER_NOT_LOADED,
        },
    )
    exporter.set_scenario(unloaded)
    gone = seconds_until(
        lambda: node(service.cluster(), entry)["gpus"] == [], timeout=10, what="no GPUs"
    )
    fault_timings.record(case, "page shows the node without GPUs after the unload", gone)
    text = exporter.metrics()
    assert value(text, "gpu_exporter_collector_success", collector="nvml") == 0
    assert state_of(service, entry) == "online"  # the node answers; it has no GPUs to show

    # The driver is loaded again: its energy counters start over, as after a real reload.
    reloaded = scenario(worker, busy=True, energy=1_000)
    exporter.set_scenario(reloaded)
    back = seconds_until(
        lambda: gpus_of(service.cluster(), entry) == identity, timeout=20, what="GPUs back"
    )
    fault_timings.record(case, "page shows the same GPUs after the driver is back", back)
    text = exporter.metrics()
    assert value(text, "gpu_exporter_collector_success", collector="nvml") == 1
    assert values(text, "gpu_energy_joules_total") == [1.0, 1.0]  # started over, in joules


def test_gpu_lost_mid_scrape(exporter_factory, status_service_factory, worker, fault_timings):
    case = "GPU lost mid-scrape"
    healthy = scenario(worker, busy=True)
    exporter = exporter_factory(healthy)
    entry = f"127.0.0.1:{exporter.port}"
    service = status_service_factory([entry], *FLAGS)
    service.wait_for(lambda d: node(d, entry)["state"] == "online", what="online")

    with ScrapeLoad(f"{exporter.url}/metrics", clients=4) as load:
        seconds_until(lambda: load.counts()[0] > 20, timeout=10, what="scrapes under way")
        lost = dataclasses.replace(healthy, gpus=[healthy.gpus[0], _lost(healthy.gpus[1])])
        exporter.set_scenario(lost)
        shown = seconds_until(
            lambda: _health(service, entry) == ["ok", "lost"], timeout=10, what="lost shown"
        )
        fault_timings.record(case, "page shows the GPU lost", shown)
        summary = service.cluster()["summary"]
        assert summary["gpus_lost"] == 1 and summary["gpus_total"] == 2
        exporter.set_scenario(healthy)
        back = seconds_until(
            lambda: _health(service, entry) == ["ok", "ok"], timeout=10, what="GPU back"
        )
        fault_timings.record(case, "page shows the GPU ok again", back)
        ok, errors = load.counts()
    assert errors == 0 and ok > 20, "a lost GPU must not fail a scrape"


def _lost(gpu: fake.FakeGpu) -> fake.FakeGpu:
    return dataclasses.replace(gpu, lost=True)


def _health(service: Any, entry: str) -> list[str]:
    try:
        return [g["health"]["state"] for g in node(service.cluster(), entry)["gpus"]]
    except requests.RequestException:
        return []
