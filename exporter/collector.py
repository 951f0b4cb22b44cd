"""The Prometheus view of a snapshot: a custom collector yielding fresh metric families.

Names, units and labels are a contract with the recording rules, alerts and dashboard: base units
(bytes, seconds, watts, joules, hertz, celsius), ratios from 0 to 1, ``_total`` counters, identity
labels only on ``_info`` series. A field that is ``None`` in the snapshot produces no sample.

Processes' command lines are left out unless asked for: a command line can hold a token or a
password given as an argument, and /metrics is often readable by anyone who reaches the port.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.snapshot import THROTTLE_REASONS, GpuSample, Snapshot

_GPU_LABELS = ["gpu", "uuid"]
_PROCESS_LABELS = ["gpu", "uuid", "pid", "user", "mig_uuid"]
_PROCESS_UTILIZATION_LABELS = ["gpu", "uuid", "pid"]
_MIG_LABELS = ["gpu", "uuid", "mig_uuid", "gi", "ci"]

# (metric name, help, ProcessSample attribute) for the per-process utilization gauges.
_PROCESS_UTILIZATION: tuple[tuple[str, str, str], ...] = (
    ("gpu_process_sm_utilization_ratio", "Share of the last sample period a kernel of this "
     "process ran (0-1).", "sm_utilization_ratio"),
    ("gpu_process_memory_utilization_ratio", "Share of the last sample period this process read "
     "or wrote device memory (0-1).", "memory_utilization_ratio"),
    ("gpu_process_encoder_utilization_ratio", "Share of the last sample period this process used "
     "the video encoder (0-1).", "encoder_utilization_ratio"),
    ("gpu_process_decoder_utilization_ratio", "Share of the last sample period this process used "
     "the video decoder (0-1).", "decoder_utilization_ratio"),
)  # fmt: skip

# (metric name, help, GpuSample attribute) for the plain per-GPU gauges.
_GPU_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("gpu_memory_used_bytes", "GPU memory in use.", "memory_used_bytes"),
    ("gpu_memory_free_bytes", "GPU memory free.", "memory_free_bytes"),
    ("gpu_memory_total_bytes", "GPU memory installed.", "memory_total_bytes"),
    ("gpu_utilization_ratio", "Share of the last sample period a kernel ran (0-1).",
     "utilization_ratio"),
    ("gpu_memory_utilization_ratio", "Share of the last sample period device memory was read or "
     "written (0-1).", "memory_utilization_ratio"),
    ("gpu_temperature_celsius", "GPU core temperature.", "temperature_celsius"),
    ("gpu_power_watts", "Power drawn by the board.", "power_watts"),
    ("gpu_power_limit_watts", "Power limit the driver enforces.", "power_limit_watts"),
    ("gpu_fan_speed_ratio", "Intended fan speed as a share of the maximum (0-1).",
     "fan_speed_ratio"),
    ("gpu_performance_state", "Performance state: 0 is the fastest, 15 the slowest.",
     "performance_state"),
    ("gpu_remapped_rows_pending", "1 if a remapped row waits for a GPU reset to take effect.",
     "remapped_rows_pending"),
    ("gpu_remapped_rows_failure", "1 if row remapping failed: the GPU should be replaced.",
     "remapped_rows_failure"),
    ("gpu_retired_pages_pending", "1 if a retired page waits for a GPU reset to take effect.",
     "retired_pages_pending"),
    ("gpu_pcie_link_generation", "Current PCIe link generation.", "pcie_link_generation"),
    ("gpu_pcie_link_generation_max", "Highest PCIe link generation the GPU and slot support.",
     "pcie_link_generation_max"),
    ("gpu_pcie_link_width", "Current PCIe link width in lanes.", "pcie_link_width"),
    ("gpu_pcie_link_width_max", "Widest PCIe link the GPU and slot support, in lanes.",
     "pcie_link_width_max"),
    ("gpu_mig_mode", "1 if MIG mode is enabled now.", "mig_mode"),
    ("gpu_mig_mode_pending", "MIG mode after the next GPU reset (0 or 1).", "mig_mode_pending"),
)  # fmt: skip

# (metric name, help, label name, ((label value, GpuSample attribute), ...)) for families
# whose series differ by one label.
_LABELLED: tuple[tuple[type, str, str, str, tuple[tuple[str, str], ...]], ...] = (
    (CounterMetricFamily, "gpu_ecc_aggregate_errors",
     "ECC memory errors over the GPU's lifetime.", "type",
     (("corrected", "ecc_aggregate_corrected_errors"),
      ("uncorrected", "ecc_aggregate_uncorrected_errors"))),
    (GaugeMetricFamily, "gpu_remapped_rows", "Memory rows remapped, by the kind of error.",
     "cause", (("correctable", "remapped_rows_corrected"),
               ("uncorrectable", "remapped_rows_uncorrected"))),
    (GaugeMetricFamily, "gpu_retired_pages", "Memory pages retired, by the ECC error behind it.",
     "cause", (("single_bit_ecc", "retired_pages_single_bit"),
               ("double_bit_ecc", "retired_pages_double_bit"))),
    (GaugeMetricFamily, "gpu_pcie_throughput_bytes_per_second",
     "PCIe throughput over a 20 ms sample (only with --collector.pcie-throughput).",
     "direction", (("tx", "pcie_tx_bytes_per_second"), ("rx", "pcie_rx_bytes_per_second"))),
)  # fmt: skip

_NVLINK_COUNTERS = (
    ("crc_flit", "crc_flit_errors"),
    ("crc_data", "crc_data_errors"),
    ("replay", "replay_errors"),
    ("recovery", "recovery_errors"),
)


def _gpu_labels(gpu: GpuSample) -> list[str]:
    return [str(gpu.index), gpu.uuid or ""]


def _identity_families(snapshot: Snapshot) -> Iterator[Metric]:
    driver = snapshot.driver
    build = InfoMetricFamily(
        "gpu_exporter_build", "Exporter version and the NVML stack it talks to."
    )
    build.add_metric(
        [],
        {
            "version": __version__,
            "driver_version": driver.driver_version,
            "cuda_version": driver.cuda_version,
            "nvml_version": driver.nvml_version,
        },
    )
    yield build
    node = InfoMetricFamily("gpu_node", "The node this exporter runs on.")
    node.add_metric([], {"hostname": snapshot.host.hostname})
    yield node
    info = InfoMetricFamily("gpu", "Identity of each GPU.")
    for gpu in snapshot.gpus:
        info.add_metric(
            [],
            {
                "gpu": str(gpu.index),
                "uuid": gpu.uuid or "",
                "name": gpu.name or "",
                "pci_bus_id": gpu.pci_bus_id or "",
                "serial": gpu.serial or "",
            },
        )
    yield info


def _gpu_families(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "gpu_up", "1 if the GPU answers NVML, 0 if it is lost.", labels=_GPU_LABELS
    )
    for gpu in gpus:
        up.add_metric(_gpu_labels(gpu), 1.0 if gpu.up else 0.0)
    yield up
    for name, documentation, attribute in _GPU_GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=_GPU_LABELS)
        for gpu in gpus:
            value = getattr(gpu, attribute)
            if value is not None:
                family.add_metric(_gpu_labels(gpu), float(value))
        yield family
    yield from _energy(gpus)
    yield from _clocks(gpus)
    yield from _ecc(gpus)
    yield from _throttle(gpus)
    yield from _labelled(gpus)
    yield from _pcie_replay(gpus)
    yield from _nvlink(gpus)
    yield from _mig(gpus)
    yield from _xid(gpus)


def _labelled(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    for family_type, name, documentation, label, members in _LABELLED:
        family = family_type(name, documentation, labels=[*_GPU_LABELS, label])
        for gpu in gpus:
            for label_value, attribute in members:
                value = getattr(gpu, attribute)
                if value is not None:
                    family.add_metric([*_gpu_labels(gpu), label_value], float(value))
        yield family


def _pcie_replay(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    replay = CounterMetricFamily(
        "gpu_pcie_replay_errors", "PCIe packets replayed after a link error.", labels=_GPU_LABELS
    )
    for gpu in gpus:
        if gpu.pcie_replay_errors is not None:
            replay.add_metric(_gpu_labels(gpu), float(gpu.pcie_replay_errors))
    yield replay


def _nvlink(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "gpu_nvlink_up", "1 if the NVLink link is active.", labels=[*_GPU_LABELS, "link"]
    )
    errors = CounterMetricFamily(
        "gpu_nvlink_errors",
        "NVLink errors on the link, by kind.",
        labels=[*_GPU_LABELS, "link", "type"],
    )
    for gpu in gpus:
        for link in gpu.nvlinks:
            labels = [*_gpu_labels(gpu), str(link.link)]
            if link.up is not None:
                up.add_metric(labels, 1.0 if link.up else 0.0)
            for kind, attribute in _NVLINK_COUNTERS:
                value = getattr(link, attribute)
                if value is not None:
                    errors.add_metric([*labels, kind], float(value))
    yield up
    yield errors


def _mig(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    info = InfoMetricFamily("gpu_mig", "A MIG device of a GPU in MIG mode, with its profile.")
    used = GaugeMetricFamily(
        "gpu_mig_memory_used_bytes", "Memory in use on the MIG device.", labels=_MIG_LABELS
    )
    total = GaugeMetricFamily(
        "gpu_mig_memory_total_bytes", "Memory of the MIG device.", labels=_MIG_LABELS
    )
    for gpu in gpus:
        for mig in gpu.migs:
            labels = [*_gpu_labels(gpu), mig.uuid, _id(mig.gpu_instance), _id(mig.compute_instance)]
            info.add_metric([], dict(zip(_MIG_LABELS, labels), profile=mig.profile))
            if mig.memory_used_bytes is not None:
                used.add_metric(labels, float(mig.memory_used_bytes))
            if mig.memory_total_bytes is not None:
                total.add_metric(labels, float(mig.memory_total_bytes))
    yield info
    yield used
    yield total


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


def _xid(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    errors = CounterMetricFamily(
        "gpu_xid_errors",
        "XID errors the driver reported since the exporter started, by XID code.",
        labels=[*_GPU_LABELS, "xid"],
    )
    last = GaugeMetricFamily("gpu_last_xid", "Code of the last XID error.", labels=_GPU_LABELS)
    when = GaugeMetricFamily(
        "gpu_last_xid_timestamp_seconds",
        "Unix time the last XID error was seen.",
        labels=_GPU_LABELS,
    )
    for gpu in gpus:
        if gpu.xid is None:
            continue
        for code, count in gpu.xid.counts:
            errors.add_metric([*_gpu_labels(gpu), str(code)], float(count))
        if gpu.xid.last_xid is not None and gpu.xid.last_timestamp_seconds is not None:
            last.add_metric(_gpu_labels(gpu), float(gpu.xid.last_xid))
            when.add_metric(_gpu_labels(gpu), gpu.xid.last_timestamp_seconds)
    yield errors
    yield last
    yield when


def _energy(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    energy = CounterMetricFamily(
        "gpu_energy_joules", "Energy used since the driver loaded.", labels=_GPU_LABELS
    )
    for gpu in gpus:
        if gpu.energy_joules is not None:
            energy.add_metric(_gpu_labels(gpu), gpu.energy_joules)
    yield energy


def _clocks(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    clocks = GaugeMetricFamily(
        "gpu_clock_hertz", "Current clock frequency.", labels=[*_GPU_LABELS, "clock"]
    )
    for gpu in gpus:
        for clock, value in (("sm", gpu.clock_sm_hertz), ("memory", gpu.clock_memory_hertz)):
            if value is not None:
                clocks.add_metric([*_gpu_labels(gpu), clock], value)
    yield clocks


def _ecc(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    ecc = CounterMetricFamily(
        "gpu_ecc_errors",
        "ECC memory errors since the driver loaded.",
        labels=[*_GPU_LABELS, "type"],
    )
    for gpu in gpus:
        for kind, value in (
            ("corrected", gpu.ecc_corrected_errors),
            ("uncorrected", gpu.ecc_uncorrected_errors),
        ):
            if value is not None:
                ecc.add_metric([*_gpu_labels(gpu), kind], float(value))
    yield ecc


def _throttle(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    throttle = GaugeMetricFamily(
        "gpu_throttle_reason",
        "1 while this reason is holding the clocks down.",
        labels=[*_GPU_LABELS, "reason"],
    )
    for gpu in gpus:
        if gpu.throttle_reasons is None:
            continue
        for bit, reason in THROTTLE_REASONS:
            active = 1.0 if gpu.throttle_reasons & bit else 0.0
            throttle.add_metric([*_gpu_labels(gpu), reason], active)
    yield throttle


def _process_families(gpus: tuple[GpuSample, ...], *, include_commands: bool) -> Iterator[Metric]:
    memory = GaugeMetricFamily(
        "gpu_process_memory_used_bytes",
        "GPU memory held by a process.",
        labels=_PROCESS_LABELS,
    )
    info = InfoMetricFamily(
        "gpu_process",
        "A process using a GPU: the Slurm job, container and Kubernetes pod it belongs to "
        "(empty when not applicable), and its command line."
        if include_commands
        else "A process using a GPU: the Slurm job, container and Kubernetes pod it belongs to "
        "(empty when not applicable); command lines are not published here.",
    )
    for gpu in gpus:
        for process in gpu.processes:
            labels = [
                str(gpu.index),
                gpu.uuid or "",
                str(process.pid),
                process.user,
                process.mig_uuid,
            ]
            if process.gpu_memory_bytes is not None:
                memory.add_metric(labels, float(process.gpu_memory_bytes))
            # "slurm_job", not "job": Prometheus owns the job and instance labels
            identity = dict(
                zip(_PROCESS_LABELS, labels),
                slurm_job=process.slurm_job,
                container=process.container,
                pod=process.pod,
                namespace=process.namespace,
            )
            if include_commands:
                identity["command"] = process.command
            info.add_metric([], identity)
    yield memory
    yield info
    for name, documentation, attribute in _PROCESS_UTILIZATION:
        family = GaugeMetricFamily(name, documentation, labels=_PROCESS_UTILIZATION_LABELS)
        for gpu in gpus:
            for process in gpu.processes:
                value = getattr(process, attribute)
                if value is not None:
                    family.add_metric([str(gpu.index), gpu.uuid or "", str(process.pid)], value)
        yield family


def _self_families(snapshot: Snapshot) -> Iterator[Metric]:
    success = GaugeMetricFamily(
        "gpu_exporter_collector_success",
        "1 if the collector's last pass succeeded.",
        labels=["collector"],
    )
    duration = GaugeMetricFamily(
        "gpu_exporter_collector_duration_seconds",
        "How long the collector's last pass took.",
        labels=["collector"],
    )
    for status in snapshot.collectors:
        success.add_metric([status.name], 1.0 if status.success else 0.0)
        duration.add_metric([status.name], status.duration_seconds)
    yield success
    yield duration
    yield GaugeMetricFamily(
        "gpu_exporter_last_collect_timestamp_seconds",
        "Unix time the last sampling pass finished; 0 before the first.",
        value=snapshot.timestamp,
    )


def snapshot_families(
    snapshot: Snapshot, *, include_processes: bool = True, include_commands: bool = False
) -> Iterator[Metric]:
    """Every metric family of one snapshot, built fresh; command lines only when asked for."""
    yield from _identity_families(snapshot)
    yield from _gpu_families(snapshot.gpus)
    if include_processes:
        yield from _process_families(snapshot.gpus, include_commands=include_commands)
    yield from _self_families(snapshot)


class SnapshotCollector(Collector):
    """A collector over a snapshot source: each ``collect`` renders the source's current snapshot.

    ``latest`` may be a sampler's ``latest`` method (a live view) or a constant function
    (render one snapshot exactly once, as the HTTP endpoint does).
    """

    def __init__(
        self,
        latest: Callable[[], Snapshot],
        *,
        include_processes: bool = True,
        include_commands: bool = False,
    ) -> None:
        self._latest = latest
        self._include_processes = include_processes
        self._include_commands = include_commands

    def collect(self) -> Iterator[Metric]:
        return snapshot_families(
            self._latest(),
            include_processes=self._include_processes,
            include_commands=self._include_commands,
        )
