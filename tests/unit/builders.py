"""Snapshots built by hand, with values chosen so every rendering of them can be checked exactly."""

from __future__ import annotations

import dataclasses
from typing import Any

from exporter.snapshot import (
    CollectorStatus,
    DriverInfo,
    GpuSample,
    HostInfo,
    ProcessSample,
    Snapshot,
)

MIB = 1024 * 1024
GIB = 1024 * MIB


def gpu(index: int, **overrides: Any) -> GpuSample:
    """A busy A100 whose every reading differs per index."""
    sample = GpuSample(
        index=index,
        up=True,
        uuid=f"GPU-{index:08d}-aaaa",
        name="NVIDIA A100-SXM4-80GB",
        serial=f"SN{index:04d}",
        pci_bus_id=f"00000000:{index + 7:02X}:00.0",
        memory_total_bytes=80 * GIB,
        memory_used_bytes=(index + 1) * 1000 * MIB,
        memory_free_bytes=80 * GIB - (index + 1) * 1000 * MIB,
        utilization_ratio=0.25 * (index + 1),
        memory_utilization_ratio=0.125,
        temperature_celsius=40.0 + index,
        power_watts=300.5 + index,
        power_limit_watts=400.0,
        energy_joules=123456.5 + index,
        fan_speed_ratio=0.3,
        clock_sm_hertz=1410e6,
        clock_memory_hertz=1593e6,
        performance_state=0,
        ecc_corrected_errors=3 + index,
        ecc_uncorrected_errors=0,
        throttle_reasons=0x4 | 0x40,  # sw_power_cap and hw_thermal_slowdown
        processes=(
            ProcessSample(
                pid=1000 + index,
                kind="compute",
                gpu_memory_bytes=512 * MIB,
                user="alice",
                command="python train.py",
            ),
        ),
    )
    return dataclasses.replace(sample, **overrides)


def down_gpu(index: int) -> GpuSample:
    """A GPU that fell off the bus: identity kept, no readings."""
    return GpuSample(index=index, up=False, uuid=f"GPU-{index:08d}-aaaa", name="NVIDIA A100")


def snapshot(*gpus: GpuSample, sequence: int = 1, hostname: str = "gpu-a") -> Snapshot:
    return Snapshot(
        timestamp=1_714_564_800.25,  # 2024-05-01 12:00:00.25 UTC
        host=HostInfo(hostname=hostname, ips=(("eth0", "10.0.0.5"), ("ib0", "192.168.1.5"))),
        driver=DriverInfo(driver_version="550.54.15", cuda_version="12.4", nvml_version="12.550"),
        gpus=gpus,
        collectors=(
            CollectorStatus("nvml", True, 0.012),
            CollectorStatus("processes", False, 0.002),
            CollectorStatus("host", True, 0.001),
        ),
        sequence=sequence,
    )
