"""The Prometheus view of a hand-built snapshot, read back with prometheus_client's own parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.collector import render
from exporter.snapshot import ProcessSample, Snapshot
from tests.unit.builders import GIB, MIB, down_gpu, gpu, snapshot

pytestmark = pytest.mark.unit

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(
    snap: Snapshot, *, include_processes: bool = True, include_commands: bool = True
) -> Samples:
    text = render(snap, include_processes=include_processes, include_commands=include_commands)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def of(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


GPU0 = {"gpu": "0", "uuid": "GPU-00000000-aaaa"}
GPU1 = {"gpu": "1", "uuid": "GPU-00000001-aaaa"}


def test_gauges_carry_each_gpus_readings_in_base_units() -> None:
    samples = scrape(snapshot(gpu(0), gpu(1)))
    assert of(samples, "gpu_memory_used_bytes") == {
        labels(**GPU0): 1000 * MIB,
        labels(**GPU1): 2000 * MIB,
    }
    assert of(samples, "gpu_memory_total_bytes") == {
        labels(**GPU0): 80 * GIB,
        labels(**GPU1): 80 * GIB,
    }
    assert of(samples, "gpu_utilization_ratio") == {labels(**GPU0): 0.25, labels(**GPU1): 0.5}
    assert of(samples, "gpu_temperature_celsius") == {labels(**GPU0): 40.0, labels(**GPU1): 41.0}
    assert of(samples, "gpu_power_watts")[labels(**GPU1)] == 301.5
    assert of(samples, "gpu_fan_speed_ratio")[labels(**GPU0)] == 0.3
    assert of(samples, "gpu_performance_state")[labels(**GPU0)] == 0.0
    assert of(samples, "gpu_up") == {labels(**GPU0): 1.0, labels(**GPU1): 1.0}


def test_counters_clocks_ecc_and_throttle_reasons() -> None:
    samples = scrape(snapshot(gpu(0)))
    assert of(samples, "gpu_energy_joules_total") == {labels(**GPU0): 123456.5}
    assert of(samples, "gpu_clock_hertz") == {
        labels(**GPU0, clock="sm"): 1410e6,
        labels(**GPU0, clock="memory"): 1593e6,
    }
    assert of(samples, "gpu_ecc_errors_total") == {
        labels(**GPU0, type="corrected"): 3.0,
        labels(**GPU0, type="uncorrected"): 0.0,
    }
    throttle = of(samples, "gpu_throttle_reason")
    assert len(throttle) == 9  # one series per known reason
    active = {dict(key)["reason"] for key, value in throttle.items() if value == 1.0}
    assert active == {"sw_power_cap", "hw_thermal_slowdown"}


def test_a_down_gpu_keeps_its_identity_and_has_no_readings() -> None:
    samples = scrape(snapshot(gpu(0), down_gpu(1)))
    assert of(samples, "gpu_up") == {labels(**GPU0): 1.0, labels(**GPU1): 0.0}
    for name in ("gpu_memory_used_bytes", "gpu_temperature_celsius", "gpu_energy_joules_total"):
        assert set(of(samples, name)) == {labels(**GPU0)}, name
    assert labels(**GPU1, type="corrected") not in of(samples, "gpu_ecc_errors_total")
    info = of(samples, "gpu_info")
    assert info[labels(**GPU1, name="NVIDIA A100", pci_bus_id="", serial="")] == 1.0


def test_identity_info_series() -> None:
    samples = scrape(snapshot(gpu(0), hostname="dgx-7"))
    assert of(samples, "gpu_node_info") == {labels(hostname="dgx-7"): 1.0}
    assert of(samples, "gpu_exporter_build_info") == {
        labels(
            version=__version__,
            driver_version="550.54.15",
            cuda_version="12.4",
            nvml_version="12.550",
        ): 1.0
    }
    assert of(samples, "gpu_info") == {
        labels(
            **GPU0, name="NVIDIA A100-SXM4-80GB", pci_bus_id="00000000:07:00.0", serial="SN0000"
        ): 1.0
    }


def test_processes_and_the_switch_that_drops_them() -> None:
    process = {**GPU0, "pid": "1000", "user": "alice", "mig_uuid": ""}
    samples = scrape(snapshot(gpu(0)))
    assert of(samples, "gpu_process_memory_used_bytes") == {labels(**process): 512 * MIB}
    identity = {**process, "slurm_job": "", "container": "", "pod": "", "namespace": ""}
    assert of(samples, "gpu_process_info") == {labels(**identity, command="python train.py"): 1.0}
    private = scrape(snapshot(gpu(0)), include_commands=False)
    assert of(private, "gpu_process_info") == {labels(**identity): 1.0}  # no command label
    without = scrape(snapshot(gpu(0)), include_processes=False)
    assert not [key for key in without if key[0].startswith("gpu_process")]
    assert of(without, "gpu_memory_used_bytes") == of(samples, "gpu_memory_used_bytes")


def test_self_metrics_report_each_collector() -> None:
    samples = scrape(snapshot())
    assert of(samples, "gpu_exporter_collector_success") == {
        labels(collector="nvml"): 1.0,
        labels(collector="processes"): 0.0,
        labels(collector="host"): 1.0,
    }
    assert of(samples, "gpu_exporter_collector_duration_seconds")[labels(collector="nvml")] == 0.012
    assert of(samples, "gpu_exporter_last_collect_timestamp_seconds") == {
        labels(): 1_714_564_800.25
    }
    assert of(samples, "gpu_up") == {}  # no GPUs, no per-GPU series


def test_hostile_label_values_survive_the_round_trip() -> None:
    command = 'evil "quoted" \\ back\nslash'
    hostile = gpu(0, processes=(ProcessSample(7, "compute", None, "bob", command),))
    samples = scrape(snapshot(hostile, hostname='h"\n'))
    assert of(samples, "gpu_node_info") == {labels(hostname='h"\n'): 1.0}
    info = of(samples, "gpu_process_info")
    no_attribution = {"mig_uuid": "", "slurm_job": "", "container": "", "pod": "", "namespace": ""}
    assert info == {labels(**GPU0, pid="7", user="bob", **no_attribution, command=command): 1.0}
    assert of(samples, "gpu_process_memory_used_bytes") == {}  # unknown memory: no sample
