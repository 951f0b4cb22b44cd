"""A small monitored cluster for end-to-end tests: two real exporters and a real Prometheus.

Node ``localhost`` has four GPUs: GPU 0 shared by two worker processes and one process whose owner
cannot be read (a pid that does not exist), with ECC errors and active throttling (and hot when
asked); GPU 1 running one worker; GPU 2 idle and free; GPU 3 lost. With ``health``, GPU 0 also has
health readings (a PCIe link below its maximum with replays, an NVLink down with errors, a row remap
pending, an XID, MIG mode pending) and per-process utilization (one of its workers busy, one idle),
GPU 1's worker reports 0% SM (so GPU 1 is idle-held once the idle-held threshold, shortened to
``IDLE_HELD_AFTER`` in the rules, has passed), and a fifth GPU in MIG mode runs a fourth worker in a
MIG device; where cgroups can be made (root, writable v1 freezer hierarchy) the workers are placed
in Slurm-shaped job cgroups first, so that an exporter that reads cgroups attributes them to two
jobs, and where grpcio is installed a stand-in kubelet (a real gRPC server on a unix socket) tells
node ``localhost``'s exporter that pod ``ml/train-0`` holds GPU 1, so its worker belongs to that
pod. With ``gpm`` (and ``health``), GPU 0, GPU 1 and the MIG GPU's two GPU instances report GPM
figures (``GPM_GPU``, ``GPM_MIG``): GPU 1's worker holds it at low SM activity. Node ``127.0.0.1``
has two busy GPUs running two workers. Workers are real ``sleep`` processes of the user running the
tests, so the exporter resolves their user and command; ``localhost`` publishes command lines on
/metrics (``--metrics.command-line``), ``127.0.0.1`` does not. Targets are written by the project's
own generator (``gpu-status-api targets``) from a hosts.txt naming both exporters; the rules'
thresholds by the project's other generator (``gpu-status-api thresholds``), with the idle-held
threshold shortened as the alerts' ``for:`` are.
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pytest

from simulator.fakenvml import scenario as fake
from simulator.prometheus import PrometheusServer, running_prometheus
from tests.support.cgroups import Placement, v1_root
from tests.support.kubelet import PodDevices, running_kubelet

GIB = 1024**3
# No process has this pid (above the usual pid_max), so its owner cannot be read.
UNKNOWN_PID = 4_194_000
HOT_CELSIUS = 93
THROTTLE_SW_POWER_CAP = 0x4
THROTTLE_HW_THERMAL = 0x40
HEALTH_XID = 13  # graphics engine exception: an application fault, no GpuXid* alert
MIG_GPU = 4
IDLE_HELD_AFTER = 2  # seconds, in the rules' thresholds (1800 shipped)
# GPM figures in percent, as NVML reports them (the exporter publishes 0-1 ratios): GPU 0 busy,
# GPU 1 held at low SM activity (under GpuLowSmActivity's 10%), and the MIG GPU by GPU instance
# (its worker runs in GI 2). The whole MIG GPU has none, and node 127.0.0.1 has no GPM at all.
GPM_GPU = {
    0: fake.FakeGpmMetrics(sm_active=50, sm_occupancy=25, tensor_active=12.5, dram_active=40),
    1: fake.FakeGpmMetrics(sm_active=2.5, sm_occupancy=5, tensor_active=0, dram_active=10),
}
GPM_MIG = {
    1: fake.FakeGpmMetrics(sm_active=30, sm_occupancy=20, tensor_active=10, dram_active=5),
    2: fake.FakeGpmMetrics(sm_active=60, sm_occupancy=35, tensor_active=20, dram_active=15),
}
# The pod the kubelet of node localhost names for GPU 1 (one worker, 4 GiB) with ``health``.
KUBELET_POD = PodDevices("ml", "train-0", "worker", [fake.gpu_uuid(1)])


def node_a(
    workers: list[int], *, hot: bool = False, health: bool = False, gpm: bool = False
) -> fake.FakeScenario:
    """The four-GPU node; ``workers`` needs three pids, four with ``health`` (five GPUs)."""
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
    if health:
        gpus[0] = with_health(gpus[0], busy=workers[0], idle=workers[1])
        gpus[1] = replace(
            gpus[1],
            process_utilization=[fake.FakeProcessUtilization(workers[2], sm=0, memory=0)],
            process_utilization_period=100_000,
            # GPM: a quarter of the SMs busy (gpu_sm_active_ratio 0.25)
            gpm="supported",
            gpm_metrics=fake.FakeGpmMetrics(sm_active=25.0),
        )
        gpus.append(mig_gpu(workers[3]))
    if gpm:
        gpus = with_gpm(gpus)
    return fake.FakeScenario(gpus=gpus)


def with_gpm(gpus: list[fake.FakeGpu]) -> list[fake.FakeGpu]:
    """``gpus`` with the GPM figures of ``GPM_GPU`` and, on the MIG GPU, ``GPM_MIG``."""
    result = []
    for index, gpu in enumerate(gpus):
        if index in GPM_GPU:
            gpu = replace(gpu, gpm="supported", gpm_metrics=GPM_GPU[index])
        elif index == MIG_GPU:
            gpu = replace(gpu, gpm="supported", gpm_mig_metrics=dict(GPM_MIG))
        result.append(gpu)
    return result


def with_health(gpu: fake.FakeGpu, *, busy: int, idle: int) -> fake.FakeGpu:
    """``gpu`` with a reading on every health panel, and ``idle`` holding memory at 0% SM."""
    return replace(
        gpu,
        pcie_link=fake.FakePcieLink(max_gen=5, max_width=16, gen=4, width=8),
        pcie_replay=3,
        nvlinks=[fake.FakeNvLink(), fake.FakeNvLink(False, crc_flit=7, crc_data=2, replay=1)],
        remapped_rows=fake.FakeRemappedRows(corrected=2, uncorrected=1, pending=True),
        xids=[fake.FakeXid(HEALTH_XID)],
        mig_mode=(0, 1),  # MIG turns on at the next reset
        process_utilization=[
            fake.FakeProcessUtilization(busy, sm=75, memory=30),
            fake.FakeProcessUtilization(idle, sm=0, memory=0),
        ],
        # a new sample stamp every 0.1 s: every exporter pass reads fresh values
        process_utilization_period=100_000,
    )


def mig_gpu(worker: int) -> fake.FakeGpu:
    """A GPU in MIG mode with two MIG devices; ``worker`` holds 1 GiB on the second."""
    gpu = fake.make_mig_gpu(MIG_GPU, profiles=("3g.40gb", "1g.10gb"), memory_used=6 * GIB)
    gpu.migs[0].memory_used = 5 * GIB
    gpu.migs[1].memory_used = 1 * GIB
    gpu.processes = [fake.FakeProcess(worker, 1 * GIB, gpu_instance=2, compute_instance=0)]
    return gpu


def place_in_slurm_jobs(placement: Placement, jobs: dict[str, list[int]]) -> bool:
    """Move each job's pids into a Slurm cgroup v1 job cgroup; False where that cannot be done.

    Best effort: without root or a writable freezer hierarchy the workers stay where they are
    and no process belongs to a job.
    """
    root = v1_root("freezer")
    if os.geteuid() != 0 or root is None:
        return False
    try:
        for job, pids in jobs.items():
            step = placement.make(root, f"slurm/uid_{os.getuid()}/job_{job}/step_0")
            for pid in pids:
                placement.move(root, step, pid)
    except pytest.skip.Exception:  # not writable here: Placement says why, we go on without
        return False
    return True


def job_ids() -> tuple[str, str]:
    """Two Slurm job ids that concurrent runs do not share."""
    unique = os.getpid() % 100_000
    return str(7100_00000 + unique), str(7200_00000 + unique)


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
    health: bool = False
    gpm: bool = False
    # Slurm job id -> pids placed in its cgroup (empty where cgroups could not be made)
    slurm_jobs: dict[str, list[int]] = field(default_factory=dict)
    # What node localhost's kubelet answers (empty where no kubelet runs: without grpcio)
    pods: list[PodDevices] = field(default_factory=list)

    def set_node_a(self, *, hot: bool) -> None:
        scenario = node_a(self.workers["localhost"], hot=hot, health=self.health, gpm=self.gpm)
        self.scenarios["localhost"] = scenario
        self.exporters["localhost"].set_scenario(scenario)


def write_thresholds(path: Path, *flags: str) -> Path:
    """The rules' thresholds, by the project's generator (``gpu-status-api thresholds``)."""
    subprocess.run(
        [sys.executable, "-m", "status_api", "thresholds", *flags, "-o", str(path)],
        check=True,
        timeout=30,
        capture_output=True,
    )
    return path


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
    health: bool = False,
    gpm: bool = False,
) -> Iterator[Cluster]:
    """Start both exporters and Prometheus; yield once every target is up and rules recorded.

    ``health`` adds node ``localhost``'s health readings, MIG GPU, Slurm jobs and kubelet,
    ``gpm`` its GPM figures (see above).
    """
    workers = {"localhost": worker_pids(4 if health else 3), "127.0.0.1": worker_pids(2)}
    placement = Placement()
    slurm_jobs: dict[str, list[int]] = {}
    if health:
        # before the exporters start: they may read a process's cgroup once and keep it
        first, second = job_ids()
        local = workers["localhost"]
        wanted = {first: [local[0], local[1], local[3]], second: [local[2]]}
        if place_in_slurm_jobs(placement, wanted):
            slurm_jobs = wanted
    with ExitStack() as stack:
        stack.callback(placement.cleanup)
        pods = [KUBELET_POD] if health and importlib.util.find_spec("grpc") else []
        localhost_flags = []
        if pods:
            kubelet = stack.enter_context(running_kubelet(pods))
            localhost_flags = [
                "--collector.kubelet.pod-resources-socket", str(kubelet.socket_path),
            ]  # fmt: skip
        cluster = stack.enter_context(
            _running(
                exporter_factory, workers, tmp_path, hot=hot, health=health, gpm=gpm,
                alert_for=alert_for, alertmanagers=alertmanagers,
                extra_rule_files=extra_rule_files, localhost_flags=localhost_flags,
            )
        )  # fmt: skip
        cluster.slurm_jobs = slurm_jobs
        cluster.pods = pods
        yield cluster


@contextmanager
def _running(
    exporter_factory: Callable[..., Any],
    workers: dict[str, list[int]],
    tmp_path: Path,
    *,
    hot: bool,
    health: bool,
    gpm: bool,
    alert_for: str,
    alertmanagers: Sequence[str],
    extra_rule_files: Sequence[Path],
    localhost_flags: Sequence[str],
) -> Iterator[Cluster]:
    scenarios = {
        "localhost": node_a(workers["localhost"], hot=hot, health=health, gpm=gpm),
        "127.0.0.1": node_b(workers["127.0.0.1"]),
    }
    flags = {"localhost": ["--metrics.command-line", *localhost_flags], "127.0.0.1": []}
    exporters = {
        node: exporter_factory(scenario, *flags[node]) for node, scenario in scenarios.items()
    }
    targets = write_targets(tmp_path, {node: e.port for node, e in exporters.items()})
    thresholds = write_thresholds(
        tmp_path / "thresholds.yml", "--idle-held-after", str(IDLE_HELD_AFTER)
    )
    with running_prometheus(
        tmp_path / "prometheus",
        targets_file=targets,
        alert_for=alert_for,
        alertmanagers=alertmanagers,
        extra_rule_files=extra_rule_files,
        rule_overrides={"rules/thresholds.yml": thresholds},
    ) as prometheus:
        prometheus.wait_for('up{job="gpu"} == 1', lambda result: len(result) == 2)
        # Two evaluations of the GPU-seconds counter: it has a rate by then.
        prometheus.wait_for("user:gpu_seconds:total > 0", lambda result: len(result) == 2)
        yield Cluster(prometheus, exporters, scenarios, workers, health=health, gpm=gpm)
