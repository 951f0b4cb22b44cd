"""Scenarios and entry-point lists shared by the probes and the tests (no pynvml here)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from simulator.fakenvml import scenario as fake

A100 = "NVIDIA A100-SXM4-40GB"

# Each new entry point and the handle its call goes to: GPU 0 (in MIG mode: g, or its MIG
# handle m) or GPU 1 (with samples and video utilization: g1).
NEW_ENTRY_POINTS = {
    "nvmlDeviceGetProcessUtilization": "g1",
    "nvmlDeviceGetEncoderUtilization": "g1",
    "nvmlDeviceGetDecoderUtilization": "g1",
    "nvmlDeviceGetMigMode": "g",
    "nvmlDeviceGetMaxMigDeviceCount": "g",
    "nvmlDeviceGetMigDeviceHandleByIndex": "g",
    "nvmlDeviceIsMigDeviceHandle": "m",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": "m",
    "nvmlDeviceGetGpuInstanceId": "m",
    "nvmlDeviceGetComputeInstanceId": "m",
    "nvmlDeviceGetAttributes_v2": "m",
}

HEALTH_ENTRY_POINTS = [
    "nvmlEventSetCreate", "nvmlEventSetFree", "nvmlDeviceGetSupportedEventTypes",
    "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2", "nvmlEventSetWait",
    "nvmlDeviceGetRemappedRows", "nvmlDeviceGetRetiredPages", "nvmlDeviceGetRetiredPages_v2",
    "nvmlDeviceGetRetiredPagesPendingStatus", "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetPcieReplayCounter", "nvmlDeviceGetCurrPcieLinkGeneration",
    "nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetMaxPcieLinkWidth", "nvmlDeviceGetPcieThroughput", "nvmlDeviceGetNvLinkState",
    "nvmlDeviceGetFieldValues",
]  # fmt: skip
DEVICE_HEALTH_ENTRY_POINTS = [name for name in HEALTH_ENTRY_POINTS if "Device" in name]


def mig_scenario(**overrides: Any) -> fake.FakeScenario:
    """GPU 0 in MIG mode: GPU instance 1 split in two compute instances, GPU instance 2 whole;
    GPU 1 without MIG; GPU 2 MIG-capable, disabled, enabled at the next reset."""
    migs = [
        fake.FakeMig(1, 0, "1c.3g.20gb", fake.mig_uuid(0, 0), 20 * fake.GIB, 1 * fake.GIB),
        fake.FakeMig(1, 1, "2c.3g.20gb", fake.mig_uuid(0, 1), 20 * fake.GIB, 2 * fake.GIB),
        fake.FakeMig(2, 0, "1g.5gb", fake.mig_uuid(0, 2), 5 * fake.GIB, 0),
    ]
    processes = [
        fake.FakeProcess(301, 1 * fake.GIB, gpu_instance=1, compute_instance=0),
        fake.FakeProcess(302, 2 * fake.GIB, gpu_instance=1, compute_instance=1),
        fake.FakeProcess(303, 3 * fake.GIB, kind="graphics", gpu_instance=1, compute_instance=1),
        fake.FakeProcess(304, 4 * fake.GIB, gpu_instance=1, compute_instance=1),
    ]
    parent = fake.make_gpu(
        0,
        name=A100,
        mig_mode=(1, 1),
        migs=migs,
        processes=processes,
        process_utilization=[fake.FakeProcessUtilization(301, sm=5, memory=5)],
        encoder_utilization=1,
    )
    gpus = [replace(parent, **overrides), fake.make_gpu(1), fake.make_gpu(2, mig_mode=(0, 1))]
    return fake.FakeScenario(gpus=gpus)


def fault_scenario(kind: str) -> fake.FakeScenario:
    """``healthy``; ``fail``: each new entry point fails with its own code, on the GPU its
    call goes to (a MIG handle through its parent); ``block``: two of them sleep 0.5 s."""
    parent = mig_scenario().gpus[0]
    sampled = fake.make_gpu(
        1,
        process_utilization=[fake.FakeProcessUtilization(1, sm=2, memory=3)],
        encoder_utilization=1,
        decoder_utilization=2,
    )
    if kind == "fail":
        for code, name in enumerate(NEW_ENTRY_POINTS, start=100):
            (sampled if NEW_ENTRY_POINTS[name] == "g1" else parent).fail[name] = code
    elif kind == "block":
        sampled.block = {"nvmlDeviceGetProcessUtilization": 0.5}
        parent.block = {"nvmlDeviceGetGpuInstanceId": 0.5}
    return fake.FakeScenario(gpus=[parent, sampled])


# The figures of GPM_SCENARIO: every metric the library serves on GPU 0, some on GPU 3's GPU
# instance 1, none on its GPU instance 2.
GPM_FIGURES = fake.FakeGpmMetrics(
    graphics_active=91.5, sm_active=45.5, sm_occupancy=30.25, integer_active=7,
    tensor_active=62.125, dram_active=12.5, fp64_active=1.5, fp32_active=20, fp16_active=0,
    pcie_tx=3 * fake.MIB, pcie_rx=1536 * fake.MIB // 1024, nvlink_tx=50 * fake.GIB,
    nvlink_rx=5 * fake.GIB // 2,
)  # fmt: skip
GPM_MIG_FIGURES = fake.FakeGpmMetrics(sm_active=20, dram_active=37.5)


def gpm_scenario(**gpu0: Any) -> fake.FakeScenario:
    """GPU 0 with GPM and every figure; GPU 1 without GPM (before Hopper); GPU 2 with GPM held
    by another client; GPU 3 in MIG mode with GPM, figures for GPU instance 1 only."""
    mig = fake.make_mig_gpu(
        3, profiles=("3g.40gb", "1g.10gb"), gpm="supported", gpm_mig_metrics={1: GPM_MIG_FIGURES}
    )
    return fake.FakeScenario(
        gpus=[
            fake.make_gpu(0, **{"gpm": "supported", "gpm_metrics": GPM_FIGURES, **gpu0}),
            fake.make_gpu(1, name=A100),
            fake.make_gpu(2, gpm="refused", gpm_metrics=GPM_FIGURES),
            mig,
        ]
    )
