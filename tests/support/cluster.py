"""A small monitored cluster for end-to-end tests: two real exporters and a real Prometheus.

Node ``localhost`` has four GPUs: GPU 0 shared by two worker processes and one process whose
owner cannot be read (a pid that does not exist), with ECC errors and active throttling (and hot
when asked); GPU 1 running one worker; GPU 2 idle and free; GPU 3 lost. Node ``127.0.0.1`` has
two busy GPUs running two workers. Workers are real ``sleep`` processes of the user running the
tests, so the exporter resolves their user and command; ``localhost`` publishes command lines on
/metrics (``--metrics.command-line``), ``127.0.0.1`` does not. Targets are written by the project's
own generator (``gpu-status-api targets``) from a hosts.txt naming both exporters.
"""

from __future__ import annotations

import getpass
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from simulator.fakenvml import scenario as fake
from simulator.prometheus import PrometheusServer, running_prometheus

GIB = 1024**3
# No process has this pid (above the usual pid_max), so its owner cannot be read.
UNKNOWN_PID = 4_194_000
HOT_CELSIUS = 93
THROTTLE_SW_POWER_CAP = 0x4
THROTTLE_HW_THERMAL = 0x40


def node_a(workers: list[int], *, hot: bool = False) -> fake.FakeScenario:
    """The four-GPU node; ``workers`` needs three pids."""
    shared = [
        fake.FakeProcess(workers[0], 2 * GIB),
        fake.FakeProcess(workers[1], 3 * GIB),
        fake.FakeProcess(UNKNOWN_PID, 1 * GIB),
    ]
    gpus = [
        fake.make_gpu(
            0,
            processes=shared,
            memory_used=6 * GIB + 300 * 1024**2,
            utilization_gpu=80,
            temperature=HOT_CELSIUS if hot else 70,
            ecc_corrected=5,
            ecc_uncorrected=2,
            throttle_reasons=THROTTLE_SW_POWER_CAP | THROTTLE_HW_THERMAL,
        ),
        fake.make_gpu(
            1,
            processes=[fake.FakeProcess(workers[2], 4 * GIB)],
            memory_used=4 * GIB + 300 * 1024**2,
            utilization_gpu=40,
            temperature=60,
        ),
        fake.make_gpu(
            2,
            memory_used=0,
            utilization_gpu=0,
            temperature=35,
            throttle_reasons=fake.THROTTLE_GPU_IDLE,
        ),
        fake.make_gpu(3, lost=True),
    ]
    return fake.FakeScenario(gpus=gpus)


def node_b(workers: list[int]) -> fake.FakeScenario:
    """The two-GPU node, one worker on each GPU; ``workers`` needs two pids."""
    scenario = fake.busy(2, workers, seed=7)
    scenario.gpus = [
        replace(gpu, temperature=55 + index) for index, gpu in enumerate(scenario.gpus)
    ]
    return scenario


@dataclass
class Cluster:
    """What a test needs to know about the running cluster."""

    prometheus: PrometheusServer
    exporters: dict[str, Any]  # node label -> ExporterProcess
    scenarios: dict[str, fake.FakeScenario]
    workers: dict[str, list[int]]
    user: str = field(default_factory=getpass.getuser)

    def set_node_a(self, *, hot: bool) -> None:
        scenario = node_a(self.workers["localhost"], hot=hot)
        self.scenarios["localhost"] = scenario
        self.exporters["localhost"].set_scenario(scenario)


def write_targets(tmp_path: Path, ports: dict[str, int]) -> Path:
    """Targets from a hosts.txt, by the project's generator (``gpu-status-api targets``)."""
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("".join(f"{host}:{port}\n" for host, port in ports.items()))
    targets = tmp_path / "targets" / "gpu-nodes.json"
    targets.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "status_api", "targets", "-c", str(hosts), "-o", str(targets)],
        check=True,
        timeout=30,
        capture_output=True,
    )
    return targets


@contextmanager
def monitored_cluster(
    exporter_factory: Callable[..., Any],
    worker_pids: Callable[[int], list[int]],
    tmp_path: Path,
    *,
    hot: bool = False,
    alert_for: str = "2s",
    alertmanagers: Sequence[str] = (),
    extra_rule_files: Sequence[Path] = (),
) -> Iterator[Cluster]:
    """Start both exporters and Prometheus; yield once every target is up and rules recorded."""
    workers = {"localhost": worker_pids(3), "127.0.0.1": worker_pids(2)}
    scenarios = {
        "localhost": node_a(workers["localhost"], hot=hot),
        "127.0.0.1": node_b(workers["127.0.0.1"]),
    }
    flags = {"localhost": ["--metrics.command-line"], "127.0.0.1": []}
    exporters = {
        node: exporter_factory(scenario, *flags[node]) for node, scenario in scenarios.items()
    }
    targets = write_targets(tmp_path, {node: e.port for node, e in exporters.items()})
    with running_prometheus(
        tmp_path / "prometheus",
        targets_file=targets,
        alert_for=alert_for,
        alertmanagers=alertmanagers,
        extra_rule_files=extra_rule_files,
    ) as prometheus:
        prometheus.wait_for('up{job="gpu"} == 1', lambda result: len(result) == 2)
        # Two evaluations of the GPU-seconds counter: it has a rate by then.
        prometheus.wait_for("user:gpu_seconds:total > 0", lambda result: len(result) == 2)
        yield Cluster(prometheus, exporters, scenarios, workers)
