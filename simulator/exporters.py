"""Real ``gpu-exporter`` processes on the fake NVML library, and worker processes for scenarios.

Used by the tests (``exporter_factory`` starts one per test), the fuzz, load and soak runs, the
benchmarks and the demo: an exporter that lives as long as its caller wants, and sessions that
reach it as many different clients.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import requests
from requests.adapters import HTTPAdapter

from simulator.fakenvml import scenario as fake
from simulator.proc import ManagedProcess, StartError, free_port, wait_started, wait_until

PASSWORD = "test-password"


def nvml_env(library_dir: Path, scenario_path: Path) -> dict[str, str]:
    """Environment for a child that should load the fake library and serve ``scenario_path``."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(library_dir), env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["FAKE_NVML_SCENARIO"] = str(scenario_path)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("GPU_MONITOR_PASSWORD", None)
    return env


@dataclass
class ExporterProcess:
    """A running ``gpu-exporter`` on the fake library."""

    process: ManagedProcess
    port: int
    password: str
    scenario_path: Path
    scheme: str = "http"
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def set_scenario(self, scenario: fake.FakeScenario | str | bytes) -> None:
        """Replace the scenario atomically; the fake library re-reads it on its next call."""
        write_scenario(self.scenario_path, scenario)

    def metrics(self) -> str:
        response = self.session.get(f"{self.url}/metrics", timeout=5)
        response.raise_for_status()
        return response.text

    def status(self, password: str | None = None) -> dict[str, Any]:
        body = {"passwd": self.password if password is None else password}
        response = self.session.post(f"{self.url}/get-status", json=body, timeout=5)
        response.raise_for_status()
        return response.json()

    def wait_for_metrics(self, predicate: Callable[[str], bool], *, timeout: float = 10.0) -> str:
        """Scrape until ``predicate(text)`` holds; return that scrape."""

        def attempt() -> str | None:
            text = self.metrics()
            return text if predicate(text) else None

        return str(wait_until(attempt, timeout=timeout, what="metrics condition"))

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> int | None:
        return self.process.stop()


def write_scenario(path: Path, scenario: fake.FakeScenario | str | bytes) -> None:
    if isinstance(scenario, fake.FakeScenario):
        fake.write(path, scenario)
        return
    data = scenario.encode() if isinstance(scenario, str) else scenario
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def start_exporter(
    library_dir: Path,
    workdir: Path,
    scenario: fake.FakeScenario | str | bytes,
    *args: str,
    password: str = PASSWORD,
    interval: float = 0.5,
    name: str = "exporter",
    scheme: str = "http",
) -> ExporterProcess:
    """Start ``gpu-exporter`` on the fake library with its files under ``workdir``; wait ready.

    :class:`~simulator.proc.StartError` (the exporter stopped) if it does not become ready.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    scenario_path = workdir / f"{name}.scn"
    write_scenario(scenario_path, scenario)
    password_file = workdir / f"{name}-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)  # as documented; a wider mode is warned about
    port = free_port()
    command = [
        sys.executable, "-m", "exporter", "--port", str(port), "--listen-address", "127.0.0.1",
        "--interval", str(interval), "--password-file", str(password_file), *args,
    ]  # fmt: skip
    process = ManagedProcess(
        command, log_path=workdir / f"{name}.log", env=nvml_env(library_dir, scenario_path)
    )
    exporter = ExporterProcess(process, port, password, scenario_path, scheme=scheme)
    try:
        # Whether it is up, not whom it is: a test's own CA is checked by the test.
        ready = f"{exporter.url}/-/ready"
        wait_started(process, ready, what="exporter", timeout=30, verify=scheme == "http")
    except StartError:
        exporter.stop()
        raise
    return exporter


class Workers:
    """Real processes whose pids a scenario lists; killed (and reaped) by :meth:`stop`."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def start(self, n: int) -> list[int]:
        """``n`` sleeping processes."""
        return [self.spawn(["sleep", "3600"]) for _ in range(n)]

    def spawn(self, argv: Sequence[str | bytes]) -> int:
        """One process with exactly ``argv`` (bytes allowed, so command lines need not be UTF-8)."""
        child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL)
        self._children.append(child)
        return child.pid

    def retire(self, pids: Sequence[int]) -> None:
        """Kill and reap the workers with these pids."""
        wanted = set(pids)
        for child in [c for c in self._children if c.pid in wanted]:
            child.kill()
            child.wait()
            self._children.remove(child)

    def stop(self) -> None:
        self.retire([child.pid for child in self._children])

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _SourceAdapter(HTTPAdapter):
    """Connects from a chosen local address, so the server sees a different client."""

    def __init__(self, source: str, **kwargs: Any) -> None:
        self._source = source
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._source, 0)
        super().init_poolmanager(*args, **kwargs)


class ClientAddresses:
    """Sessions from distinct loopback addresses (127.0.0.0/8 all reaches 127.0.0.1 on Linux).

    The exporter slows down an address after a few wrong passwords; a fuzzer sending hundreds of
    wrong ones would otherwise only ever see 429 and never reach the body parser.
    """

    def __init__(self, *, base: int = 2) -> None:
        self._counter = itertools.count(base)

    def address(self) -> str:
        n = next(self._counter) % (254 * 254 * 254)
        return f"127.{n // 64516 % 254 + 1}.{n // 254 % 254 + 1}.{n % 254 + 1}"

    def session(self, source: str | None = None) -> requests.Session:
        """A fresh session whose connections come from a new address (or from ``source``)."""
        session = requests.Session()
        adapter = _SourceAdapter(source or self.address())
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


def rss_bytes(pid: int) -> int:
    """Resident memory of a process."""
    return int(psutil.Process(pid).memory_info().rss)
