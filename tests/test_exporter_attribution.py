"""Who holds each GPU, through the real exporter on the fake NVML.

Per-process utilization comes from the scenario's ``process_utilization`` lines; Slurm jobs and
containers from real processes placed in real cgroups (root and writable cgroups, else skipped
with the reason); pods from a real gRPC server on a unix socket standing in for the kubelet.
"""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from simulator.fakenvml import scenario as fake
from simulator.metrics import label_sets, value, values
from tests.support.cgroups import Placement, require_root, v1_root, v2_root

UTILIZATION = (
    "gpu_process_sm_utilization_ratio",
    "gpu_process_memory_utilization_ratio",
    "gpu_process_encoder_utilization_ratio",
    "gpu_process_decoder_utilization_ratio",
)


def _gpu(pids: list[int], **overrides: object) -> fake.FakeGpu:
    processes = [fake.FakeProcess(pid, (i + 1) * fake.GIB) for i, pid in enumerate(pids)]
    return fake.make_gpu(0, processes=processes, **overrides)


def _info(text: str, pid: int) -> dict[str, str]:
    found = [labels for labels in label_sets(text, "gpu_process_info") if labels["pid"] == str(pid)]
    assert len(found) == 1, f"expected one gpu_process_info for pid {pid}, found {found}"
    return found[0]


# -- per-process utilization ---------------------------------------------------------------


def test_process_utilization_from_the_scenario(exporter_factory, worker_pids) -> None:
    first, second = worker_pids(2)
    samples = [
        fake.FakeProcessUtilization(first, sm=55, memory=21, encoder=7, decoder=3),
        fake.FakeProcessUtilization(second, sm=10, memory=0),
    ]
    # a new stamp every 0.1 s: every pass (0.5 s apart) has a sample newer than the last one
    gpu = _gpu([first, second], process_utilization=samples, process_utilization_period=100_000)
    exporter = exporter_factory(fake.FakeScenario(gpus=[gpu]))
    text = exporter.wait_for_metrics(lambda t: "gpu_process_sm_utilization_ratio{" in t)
    labels = {"gpu": "0", "uuid": gpu.uuid, "pid": str(first)}
    assert value(text, "gpu_process_sm_utilization_ratio", **labels) == pytest.approx(0.55)
    assert value(text, "gpu_process_memory_utilization_ratio", **labels) == pytest.approx(0.21)
    assert value(text, "gpu_process_encoder_utilization_ratio", **labels) == pytest.approx(0.07)
    assert value(text, "gpu_process_decoder_utilization_ratio", **labels) == pytest.approx(0.03)
    assert value(text, "gpu_process_sm_utilization_ratio", pid=str(second)) == pytest.approx(0.10)
    for name in UTILIZATION:  # labels are exactly gpu, uuid, pid: no user, no command
        assert {frozenset(s) for s in label_sets(text, name)} == {frozenset({"gpu", "uuid", "pid"})}


def test_no_new_sample_reads_zero_for_every_listed_process(exporter_factory, worker_pids) -> None:
    busy, quiet = worker_pids(2)
    # period 0: the sample is stamped once per load, so every later pass answers NOT_FOUND
    gpu = _gpu(
        [busy, quiet],
        process_utilization=[fake.FakeProcessUtilization(busy, sm=80, memory=40)],
        process_utilization_period=0,
    )
    exporter = exporter_factory(fake.FakeScenario(gpus=[gpu]))
    text = exporter.wait_for_metrics(
        lambda t: values(t, "gpu_process_sm_utilization_ratio", pid=str(busy)) == [0.0]
    )
    for pid in (busy, quiet):
        for name in UTILIZATION:
            assert value(text, name, pid=str(pid)) == 0.0


def test_unsupported_process_utilization_is_absent(exporter_factory, worker_pids) -> None:
    pids = worker_pids(2)
    exporter = exporter_factory(fake.FakeScenario(gpus=[_gpu(pids)]))
    text = exporter.wait_for_metrics(lambda t: "gpu_process_memory_used_bytes{" in t)
    assert len(values(text, "gpu_process_memory_used_bytes")) == 2
    for name in UTILIZATION:
        assert values(text, name) == []
    for pid in pids:  # no attribution here: the labels exist and are empty
        info = _info(text, pid)
        assert [info[k] for k in ("slurm_job", "container", "pod", "namespace")] == [""] * 4
        assert "job" not in info and "instance" not in info


def test_no_processes_drops_utilization_and_attribution(exporter_factory, worker_pids) -> None:
    (pid,) = worker_pids(1)
    samples = [fake.FakeProcessUtilization(pid, sm=55, memory=21)]
    gpu = _gpu([pid], process_utilization=samples, process_utilization_period=100_000)
    exporter = exporter_factory(fake.FakeScenario(gpus=[gpu]), "--no-processes")
    text = exporter.wait_for_metrics(lambda t: "gpu_up{" in t)
    assert "gpu_process_" not in text


# -- Slurm jobs and containers from real cgroups -------------------------------------------


def _unique(base: int) -> str:
    return str(base * 100_000 + os.getpid() % 100_000)


@pytest.mark.cgroups
def test_slurm_jobs_and_containers_from_real_cgroups(
    exporter_factory, worker_pids, placement: Placement
) -> None:
    v1 = require_root(v1_root("freezer"), "cgroup v1 freezer hierarchy")
    v2 = require_root(v2_root(), "cgroup v2 hierarchy")
    in_v1_job, in_v2_job, in_container, plain = worker_pids(4)
    job_v1, job_v2, container = _unique(5151), _unique(5252), secrets.token_hex(32)
    placement.move(v1, placement.make(v1, f"slurm/uid_1000/job_{job_v1}/step_0"), in_v1_job)
    step = placement.make(v2, f"system.slice/slurmstepd.scope/job_{job_v2}/step_batch")
    placement.move(v2, step, in_v2_job)
    scope = placement.make(v2, f"system.slice/docker-{container}.scope")
    placement.move(v2, scope, in_container)
    gpu = _gpu([in_v1_job, in_v2_job, in_container, plain])
    exporter = exporter_factory(fake.FakeScenario(gpus=[gpu]))
    text = exporter.wait_for_metrics(lambda t: t.count("gpu_process_info{") == 4)
    assert _info(text, in_v1_job)["slurm_job"] == job_v1
    assert _info(text, in_v2_job)["slurm_job"] == job_v2
    assert _info(text, in_container)["container"] == container[:12]
    assert _info(text, in_container)["slurm_job"] == ""
    assert {k: _info(text, plain)[k] for k in ("slurm_job", "container", "pod")} == {
        "slurm_job": "",
        "container": "",
        "pod": "",
    }


def test_a_vanished_process_keeps_its_memory(exporter_factory) -> None:
    child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    child.kill()
    child.wait()  # its pid is listed by NVML but gone from /proc
    exporter = exporter_factory(fake.FakeScenario(gpus=[_gpu([child.pid])]))
    text = exporter.wait_for_metrics(lambda t: "gpu_process_info{" in t)
    assert value(text, "gpu_process_memory_used_bytes", pid=str(child.pid)) == fake.GIB
    info = _info(text, child.pid)
    assert [info[k] for k in ("user", "slurm_job", "container", "pod", "namespace")] == [""] * 5


# -- pods from the kubelet -----------------------------------------------------------------


def test_pod_and_namespace_from_the_kubelet(exporter_factory, worker_pids) -> None:
    pytest.importorskip("grpc", reason="grpcio is not installed (the kubernetes or test extra)")
    from tests.support.kubelet import PodDevices, running_kubelet

    held, other = fake.make_gpu(0), fake.make_gpu(1)
    on_held, on_other = worker_pids(2)
    held.processes = [fake.FakeProcess(on_held, fake.GIB)]
    other.processes = [fake.FakeProcess(on_other, fake.GIB)]
    with running_kubelet([PodDevices("ml", "train-7d9f", "worker", [held.uuid])]) as kubelet:
        exporter = exporter_factory(
            fake.FakeScenario(gpus=[held, other]),
            "--collector.kubelet.pod-resources-socket",
            str(kubelet.socket_path),
        )
        text = exporter.wait_for_metrics(lambda t: 'pod="train-7d9f"' in t)
    assert kubelet.calls >= 1
    info = _info(text, on_held)
    assert (info["pod"], info["namespace"], info["uuid"]) == ("train-7d9f", "ml", held.uuid)
    assert (_info(text, on_other)["pod"], _info(text, on_other)["namespace"]) == ("", "")


def test_a_mig_process_gets_the_pod_holding_its_mig_device(exporter_factory, worker_pids) -> None:
    """The kubelet lists a MIG device by its MIG uuid, not by its GPU's uuid."""
    pytest.importorskip("grpc", reason="grpcio is not installed (the kubernetes or test extra)")
    from tests.support.kubelet import PodDevices, running_kubelet

    in_held, in_other = worker_pids(2)
    gpu = fake.make_mig_gpu(0, profiles=("3g.40gb", "1g.10gb"))
    gpu.processes = [
        fake.FakeProcess(in_held, fake.GIB, gpu_instance=2, compute_instance=0),
        fake.FakeProcess(in_other, fake.GIB, gpu_instance=1, compute_instance=0),
    ]
    held = fake.mig_uuid(0, 1)
    pod = PodDevices("ml", "infer-5c8d", "server", [held], resource="nvidia.com/mig-1g.10gb")
    with running_kubelet([pod]) as kubelet:
        exporter = exporter_factory(
            fake.FakeScenario(gpus=[gpu]),
            "--collector.kubelet.pod-resources-socket",
            str(kubelet.socket_path),
        )
        text = exporter.wait_for_metrics(lambda t: 'pod="infer-5c8d"' in t)
    info = _info(text, in_held)
    assert (info["pod"], info["namespace"], info["mig_uuid"]) == ("infer-5c8d", "ml", held)
    other = _info(text, in_other)
    assert (other["pod"], other["namespace"], other["mig_uuid"]) == ("", "", fake.mig_uuid(0, 0))
