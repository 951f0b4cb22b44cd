"""The services on top of the nodes: gpu-status-api, and Prometheus (with Alertmanager) when
installed."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from simulator.demo.common import DemoError, child_env, pick_port
from simulator.demo.nodes import SimulatedNode
from simulator.proc import ManagedProcess

STATUS_INTERVAL = "2"
SCRAPE_INTERVAL = "5s"


def write_hosts(path: Path, nodes: Sequence[SimulatedNode]) -> None:
    lines = ["# The demo's simulated nodes (host:port  # exporter --hostname)"]
    lines += [f"{node.address}:{node.port}  # {node.name}" for node in nodes]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def start_status_api(
    *, hosts: Path, port: int, password_file: Path, directory: Path
) -> ManagedProcess:
    """gpu-status-api polling ``hosts``; the caller waits for it to be ready."""
    command = [
        sys.executable, "-m", "status_api", "-c", str(hosts), "--port", str(port),
        "--listen-address", "127.0.0.1", "--interval", STATUS_INTERVAL,
        "--password-file", str(password_file),
    ]  # fmt: skip
    return ManagedProcess(command, log_path=directory / "status-api.log", env=child_env())


def write_targets(hosts: Path, targets: Path) -> None:
    command = [sys.executable, "-m", "status_api", "targets", "-c", str(hosts), "-o", str(targets)]
    result = subprocess.run(command, capture_output=True, text=True, env=child_env(), check=False)
    if result.returncode != 0:
        raise DemoError(f"gpu-status-api targets failed:\n{result.stderr.strip()}")


def prometheus_installed() -> bool:
    return shutil.which("prometheus") is not None and shutil.which("promtool") is not None


@contextlib.contextmanager
def running_prometheus(
    directory: Path, *, hosts: Path, alertmanagers: Sequence[str] = ()
) -> Iterator[str]:
    """Prometheus with the shipped config and rules (their ``for:`` kept), sending alerts to
    ``alertmanagers`` (host:port); yields its URL.

    :class:`~simulator.proc.StartError` if it does not start.
    """
    # Imported here: without Prometheus installed, the demo never needs this module.
    from simulator.prometheus import running_prometheus as run

    targets = directory / "targets.json"
    write_targets(hosts, targets)
    with run(
        directory / "prometheus",
        targets_file=targets,
        interval=SCRAPE_INTERVAL,
        alert_for=None,
        alertmanagers=alertmanagers,
        port=pick_port("127.0.0.1", 9090),
    ) as server:
        yield server.url
