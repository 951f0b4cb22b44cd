"""Fixtures shared by the suite: the fake NVML library, real exporter processes, worker pids."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from simulator import REPO
from simulator.exporters import ExporterProcess, nvml_env, write_scenario
from simulator.fakenvml import scenario as fake
from simulator.proc import ManagedProcess, free_port, wait_http

# Fixtures other test modules share, loaded here instead of imported into each module.
pytest_plugins = ["tests.support.status_service", "tests.support.cgroups", "tests.support.faults"]

ARTIFACTS = REPO / "build" / "artifacts"


@pytest.fixture(scope="session")
def fake_nvml() -> Path:
    """Directory holding the fake ``libnvidia-ml.so.1``, built once per run."""
    from simulator.fakenvml.build import build

    return build(REPO / "build" / "fakenvml").parent


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave files for people to look at (screenshots, logs)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


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
