"""Start real ``gpu-status-api`` processes for the tests and read their JSON.

``status_service_factory`` (and its module-scoped twin) is a pytest fixture; import it into a
test module to use it. ``start(hosts_lines, *extra_args)`` writes hosts.txt, starts
``python -m status_api`` on a free loopback port with short polling settings, waits until the
first round is done, and stops the process when the test ends. ``run_command("report", ...)``
runs one of the commands that end by themselves (``report``, ``job``) to its end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from simulator import REPO
from simulator.proc import ManagedProcess, free_port, wait_http, wait_until

PASSWORD = "test-password"


def run_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m status_api ARGS`` from the checkout, to its end; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "status_api", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


@dataclass
class StatusService:
    """A running gpu-status-api."""

    process: ManagedProcess
    port: int
    hosts_path: Path
    password_file: Path | None = None
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return self.session.get(self.url + path, **kwargs)

    def cluster(self) -> dict[str, Any]:
        response = self.get("/api/v1/cluster")
        response.raise_for_status()
        return response.json()

    def legacy(self) -> dict[str, Any]:
        response = self.get("/get-status")
        response.raise_for_status()
        return response.json()

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 10.0,
        what: str = "cluster condition",
    ) -> dict[str, Any]:
        """Read /api/v1/cluster until ``predicate(document)`` holds; return that document."""

        def attempt() -> dict[str, Any] | None:
            document = self.cluster()
            return document if predicate(document) else None

        try:
            return wait_until(attempt, timeout=timeout, interval=0.1, what=what)  # type: ignore[return-value]
        except TimeoutError as error:
            last = self.cluster()
            states = {n["node"]: (n["state"], n["error"]) for n in last["nodes"]}
            raise AssertionError(
                f"{error}; nodes now: {states}\nlog:\n{self.log()[-3000:]}"
            ) from None

    def write_hosts(self, text: str) -> None:
        temporary = self.hosts_path.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.hosts_path)

    def log(self) -> str:
        if self.process.alive():
            return self.process.log()
        return self.process.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int | None:
        return self.process.stop()


def node(document: dict[str, Any], text: str) -> dict[str, Any]:
    """The node of a cluster document by its hosts.txt entry."""
    for candidate in document["nodes"]:
        if candidate["node"] == text:
            return candidate
    raise KeyError(f"{text} not in {[n['node'] for n in document['nodes']]}")


def status_command(hosts_path: Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "status_api", "-c", str(hosts_path), "--port", str(port),
            "--listen-address", "127.0.0.1", *args]  # fmt: skip


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GPU_MONITOR_PASSWORD", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ServiceStarter:
    """Starts services with their files under ``directory``; :meth:`stop_all` at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[StatusService] = []

    def start(
        self,
        hosts_lines: list[str],
        *args: str,
        interval: float = 0.5,
        timeout: float = 1.0,
        password: str | None = PASSWORD,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> StatusService:
        n = len(self.started)
        hosts_path = self.directory / f"hosts-{n}.txt"
        hosts_path.write_text("\n".join(hosts_lines) + "\n")
        port = free_port()
        options = ["--interval", str(interval), "--timeout", str(timeout), *args]
        password_file = None
        if password is not None:
            password_file = self.directory / f"node-password-{n}"
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)  # as documented; a wider mode is warned about
            options += ["--password-file", str(password_file)]
        process = ManagedProcess(
            status_command(hosts_path, port, *options),
            log_path=self.directory / f"status-api-{n}.log",
            env=child_env(env),
        )
        service = StatusService(process, port, hosts_path, password_file)
        self.started.append(service)
        if wait_ready:
            try:
                wait_http(f"{service.url}/-/ready", timeout=20)
            except TimeoutError as error:
                raise AssertionError(f"{error}\nlog:\n{service.log()}") from None
        return service

    def stop_all(self) -> None:
        for service in self.started:
            service.stop()


@pytest.fixture
def status_service_factory(tmp_path: Path) -> Iterator[Callable[..., StatusService]]:
    """``start(hosts_lines, *args, interval=0.5, timeout=1.0, password=PASSWORD, ...)``."""
    starter = ServiceStarter(tmp_path)
    yield starter.start
    starter.stop_all()


@pytest.fixture(scope="module")
def module_status_service_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., StatusService]]:
    """The same, for services shared by a whole test module."""
    starter = ServiceStarter(tmp_path_factory.mktemp("status-api"))
    yield starter.start
    starter.stop_all()
