"""Fixtures shared by the suite: the fake NVML library, real exporter processes, worker pids."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from tests.fakenvml import scenario as fake
from tests.support.proc import ManagedProcess, free_port, wait_http, wait_until

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "build" / "artifacts"


@pytest.fixture(scope="session")
def fake_nvml() -> Path:
    """Directory holding the fake ``libnvidia-ml.so.1``, built once per run."""
    from tests.fakenvml.build import build

    return build(REPO / "build" / "fakenvml").parent


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave files for people to look at (screenshots, logs)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


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


@pytest.fixture
def exporter_factory(fake_nvml: Path, tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """Start real ``gpu-exporter`` processes: ``start(scenario, *extra_args, ...)``."""
    started: list[ExporterProcess] = []
    counter = itertools.count()

    def start(
        scenario: fake.FakeScenario | str | bytes,
        *args: str,
        env: dict[str, str] | None = None,
        password: str | None = "test-password",
        interval: float = 0.5,
        wait_ready: bool = True,
        scheme: str = "http",
    ) -> ExporterProcess:
        n = next(counter)
        scenario_path = tmp_path / f"scenario-{n}.scn"
        write_scenario(scenario_path, scenario)
        port = free_port()
        command = [
            sys.executable, "-m", "exporter", "--port", str(port),
            "--listen-address", "127.0.0.1", "--interval", str(interval), *args,
        ]  # fmt: skip
        if password is not None:
            password_file = tmp_path / f"password-{n}"
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)  # as documented; a wider mode is warned about
            command += ["--password-file", str(password_file)]
        environment = nvml_env(fake_nvml, scenario_path)
        environment.update(env or {})
        if password is None:  # what the exporter falls back to: environment, then the default
            password = environment.get("GPU_MONITOR_PASSWORD") or "8888"
        process = ManagedProcess(command, log_path=tmp_path / f"exporter-{n}.log", env=environment)
        exporter = ExporterProcess(process, port, password, scenario_path, scheme=scheme)
        started.append(exporter)
        if wait_ready:
            try:
                wait_http(f"{exporter.url}/-/ready", timeout=20, verify=False)
            except TimeoutError as error:
                raise AssertionError(f"{error}\nexporter log:\n{exporter.log()}") from None
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


@pytest.fixture
def worker_pids() -> Iterator[Callable[[int], list[int]]]:
    """Start ``n`` real sleeping processes whose pids a scenario can list."""
    children: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> list[int]:
        batch = [subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL) for _ in range(n)]
        children.extend(batch)
        return [child.pid for child in batch]

    yield start
    for child in children:
        child.kill()
    for child in children:
        child.wait()
