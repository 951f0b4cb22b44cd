"""The three simulated nodes: their GPUs, first jobs, scenario files and exporters.

Each node is one ``gpu-exporter`` on its own loopback address (127.0.0.1, .2, .3) and port,
with its own ``--hostname``, loading the fake NVML library and serving its own scenario file.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simulator.demo.common import child_env, pick_port
from simulator.demo.jobs import Job, JobRunner
from simulator.fakenvml import scenario as fake
from simulator.proc import ManagedProcess

MIB = fake.MIB
GIB = fake.GIB

EXPORTER_INTERVAL = "1"

BUSY, HOT, HELD, FREE, LOST = "busy", "hot", "held", "free", "lost"


@dataclass
class SimulatedGpu:
    """One GPU: its fake NVML record, what it plays in the demo, and the jobs on it."""

    gpu: fake.FakeGpu
    role: str
    max_watts: int
    idle_watts: int
    load: float = 0.0  # wandering utilisation while jobs compute
    jobs: list[Job] = field(default_factory=list)

    def room(self) -> int:
        """Bytes still free for one more job."""
        total = self.gpu.memory_total or 0
        used = sum(job.memory for job in self.jobs) + 300 * MIB
        return total - (self.gpu.memory_reserved or 0) - used


@dataclass
class SimulatedNode:
    """One node: an exporter with its own address, port, host name and scenario file."""

    name: str
    address: str
    port: int
    description: str
    gpus: list[SimulatedGpu]
    scenario_path: Path
    exporter: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def scenario(self) -> fake.FakeScenario:
        return fake.FakeScenario(gpus=[simulated.gpu for simulated in self.gpus])


# make_gpu's uuid and serial depend on the index only; these are unique across the nodes too.
def _uuid(node_number: int, index: int) -> str:
    return f"GPU-5f2b1c7e-{node_number:04x}-4{index:03x}-8000-{node_number:04x}{index:08x}"


def _serial(node_number: int, index: int) -> str:
    return str(1652922001234 + 100 * node_number + index)


def _datacentre_gpu(
    node_number: int, index: int, role: str, *, name: str, watts: int
) -> SimulatedGpu:
    gpu = fake.make_gpu(
        index,
        name=name,
        uuid=_uuid(node_number, index),
        serial=_serial(node_number, index),
        power_limit=watts * 1000,
    )
    return SimulatedGpu(gpu, role, max_watts=watts, idle_watts=watts // 10)


def _consumer_gpu(node_number: int, index: int, role: str) -> SimulatedGpu:
    # Fields a GeForce driver does not report are left out, so NVML answers NOT_SUPPORTED.
    gpu = fake.make_gpu(
        index,
        name="NVIDIA GeForce RTX 4090",
        uuid=_uuid(node_number, index),
        serial=None,
        memory_total=24 * GIB,
        memory_reserved=None,
        power_limit=None,
        energy=None,
        fan_speed=None,
        ecc_corrected=None,
        ecc_uncorrected=None,
        throttle_reasons=None,
        clock_mem=10501,
        lost=role == LOST,
    )
    return SimulatedGpu(gpu, role, max_watts=450, idle_watts=22)


def plan_nodes(directory: Path, ports: Sequence[tuple[str, int]]) -> list[SimulatedNode]:
    """The three nodes of the demo, listening on ``ports`` ((address, port) each)."""
    h100 = "NVIDIA H100 80GB HBM3"
    a100 = "NVIDIA A100-SXM4-80GB"
    dgx_b_roles = (BUSY, HOT, HELD, FREE)
    layouts = [
        (
            "dgx-a",
            "8 busy GPUs",
            [_datacentre_gpu(0, i, BUSY, name=h100, watts=700) for i in range(8)],
        ),
        (
            "dgx-b",
            "4 GPUs: busy, hot and throttled, held but idle, free",
            [
                _datacentre_gpu(1, i, role, name=a100, watts=400)
                for i, role in enumerate(dgx_b_roles)
            ],
        ),
        (
            "ws-c",
            "2 consumer GPUs with unsupported fields, one lost",
            [_consumer_gpu(2, 0, BUSY), _consumer_gpu(2, 1, LOST)],
        ),
    ]
    return [
        SimulatedNode(name, address, port, description, gpus, directory / f"{name}.scn")
        for (name, description, gpus), (address, port) in zip(layouts, ports)
    ]


def node_ports() -> list[tuple[str, int]]:
    """(address, port) of each node: 7081, 7082, 7083 where free."""
    # One loopback address per node, so Prometheus' node label (the host of hosts.txt) differs.
    addresses = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    return [(address, pick_port(address, 7081 + i)) for i, address in enumerate(addresses)]


def take_memory(simulated: SimulatedGpu, rng: random.Random) -> int:
    """Memory for a new job: a few GiB, never more than the GPU has left."""
    wanted = rng.randrange(2, 1 + max(3, (simulated.gpu.memory_total or 0) // GIB // 4)) * GIB
    return max(0, min(wanted, simulated.room()))


def start_first_jobs(nodes: Sequence[SimulatedNode], runner: JobRunner, rng: random.Random) -> None:
    """One or two jobs on every busy GPU, one on the hot and on the held GPU."""
    for node in nodes:
        for simulated in node.gpus:
            count = {BUSY: rng.choice((1, 1, 2)), HOT: 1, HELD: 1}.get(simulated.role, 0)
            for _ in range(count):
                simulated.jobs.append(runner.start(memory=take_memory(simulated, rng)))


def start_exporter(
    node: SimulatedNode, *, library_dir: Path, password_file: Path, directory: Path
) -> ManagedProcess:
    """The node's ``gpu-exporter`` on the fake library; the caller waits for it to be ready."""
    command = [
        sys.executable, "-m", "exporter", "--listen-address", node.address,
        "--port", str(node.port), "--hostname", node.name, "--interval", EXPORTER_INTERVAL,
        "--password-file", str(password_file),
    ]  # fmt: skip
    env = child_env(
        {
            "LD_LIBRARY_PATH": os.pathsep.join(
                p for p in (str(library_dir), os.environ.get("LD_LIBRARY_PATH", "")) if p
            ),
            "FAKE_NVML_SCENARIO": str(node.scenario_path),
        }
    )
    return ManagedProcess(command, log_path=directory / f"exporter-{node.name}.log", env=env)
