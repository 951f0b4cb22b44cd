"""The Prometheus view of a snapshot: fresh metric families, rendered by servicekit.exposition.

Names, units and labels are a contract with the recording rules, alerts and dashboard: base units
(bytes, seconds, watts, joules, hertz, celsius), ratios from 0 to 1, ``_total`` counters, identity
labels only on ``_info`` series. A field that is ``None`` in the snapshot produces no sample.

Processes' command lines are left out unless asked for: a command line can hold a token or a
password given as an argument, and /metrics is often readable by anyone who reaches the port.

Each GPU's and each process's identifying labels are escaped once per rendering and shared by all
their series (:class:`_Gpu`), which is what makes a scrape of 1,200 samples cost about a
millisecond.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from exporter import __version__
from exporter.dcgm_names import dcgm_families
from exporter.snapshot import (
    GPM_STATUSES,
    THROTTLE_REASONS,
    GpuSample,
    NvLinkSample,
    Snapshot,
)
from servicekit.exposition import (
    Family,
    FamilyCache,
    Kind,
    escape,
    label_text,
    openmetrics_format,
    text_format,
)

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
_LABELLED: tuple[tuple[Kind, str, str, str, tuple[tuple[str, str], ...]], ...] = (
    ("counter", "gpu_ecc_aggregate_errors",
     "ECC memory errors over the GPU's lifetime.", "type",
     (("corrected", "ecc_aggregate_corrected_errors"),
      ("uncorrected", "ecc_aggregate_uncorrected_errors"))),
    ("gauge", "gpu_remapped_rows", "Memory rows remapped, by the kind of error.",
     "cause", (("correctable", "remapped_rows_corrected"),
               ("uncorrectable", "remapped_rows_uncorrected"))),
    ("gauge", "gpu_retired_pages", "Memory pages retired, by the ECC error behind it.",
     "cause", (("single_bit_ecc", "retired_pages_single_bit"),
               ("double_bit_ecc", "retired_pages_double_bit"))),
    ("gauge", "gpu_pcie_throughput_bytes_per_second",
     "PCIe throughput over a 20 ms sample (only with --collector.pcie-throughput).",
     "direction", (("tx", "pcie_tx_bytes_per_second"), ("rx", "pcie_rx_bytes_per_second"))),
)  # fmt: skip

# (name after gpu_ or gpu_mig_, help, GpmFigures attribute) for the GPM activity gauges: per
# GPU, and per MIG device (its GPU instance's figures). The DCGM field each matches is named.
_GPM_RATIOS: tuple[tuple[str, str, str], ...] = (
    ("sm_active_ratio", "Share of the time between two GPM samples an SM had a warp resident, "
     "averaged over the SMs (0-1; DCGM_FI_PROF_SM_ACTIVE).", "sm_active_ratio"),
    ("sm_occupancy_ratio", "Warps resident on the SMs as a share of the most they can hold, "
     "averaged over the time between two GPM samples (0-1; DCGM_FI_PROF_SM_OCCUPANCY).",
     "sm_occupancy_ratio"),
    ("tensor_active_ratio", "Share of the time between two GPM samples any tensor pipe was "
     "active (0-1; DCGM_FI_PROF_PIPE_TENSOR_ACTIVE).", "tensor_active_ratio"),
    ("dram_active_ratio", "Device memory bandwidth used as a share of the peak, between two GPM "
     "samples (0-1; DCGM_FI_PROF_DRAM_ACTIVE).", "dram_active_ratio"),
    ("fp64_active_ratio", "Share of the time between two GPM samples the FP64 pipe (not tensor) "
     "was active (0-1; DCGM_FI_PROF_PIPE_FP64_ACTIVE).", "fp64_active_ratio"),
    ("fp32_active_ratio", "Share of the time between two GPM samples the FP32 pipe (not tensor) "
     "was active (0-1; DCGM_FI_PROF_PIPE_FP32_ACTIVE).", "fp32_active_ratio"),
    ("fp16_active_ratio", "Share of the time between two GPM samples the FP16 pipe (not tensor) "
     "was active (0-1; DCGM_FI_PROF_PIPE_FP16_ACTIVE).", "fp16_active_ratio"),
    ("graphics_active_ratio", "Share of the time between two GPM samples the graphics or compute "
     "engine was active (0-1; DCGM_FI_PROF_GR_ENGINE_ACTIVE).", "graphics_active_ratio"),
)  # fmt: skip

# (metric name, help, ((direction, GpmFigures attribute), ...)) for GPM's link traffic.
_GPM_TRAFFIC: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("gpu_pcie_traffic_bytes_per_second", "PCIe traffic, mean over the time between two GPM "
     "samples (DCGM_FI_PROF_PCIE_TX_BYTES / _RX_BYTES).",
     (("tx", "pcie_tx_bytes_per_second"), ("rx", "pcie_rx_bytes_per_second"))),
    ("gpu_nvlink_traffic_bytes_per_second", "NVLink traffic over all links, mean over the time "
     "between two GPM samples (DCGM_FI_PROF_NVLINK_TX_BYTES / _RX_BYTES).",
     (("tx", "nvlink_tx_bytes_per_second"), ("rx", "nvlink_rx_bytes_per_second"))),
)  # fmt: skip

_NVLINK_COUNTERS = (
    ("crc_flit", "crc_flit_errors"),
    ("crc_data", "crc_data_errors"),
    ("replay", "replay_errors"),
    ("recovery", "recovery_errors"),
)


@dataclass(frozen=True)
class _Gpu:
    """A GPU's sample with its ``gpu`` and ``uuid`` labels, escaped once for all its series."""

    sample: GpuSample
    labels: str

    @classmethod
    def of(cls, gpu: GpuSample) -> _Gpu:
        return cls(gpu, f'gpu="{gpu.index}",uuid="{escape(gpu.uuid or "")}"')


def _identity_families(snapshot: Snapshot, gpus: tuple[_Gpu, ...]) -> Iterator[Family]:
    driver = snapshot.driver
    build = Family("gpu_exporter_build", "info", "Exporter version and the NVML stack it talks to.")
    build.add(
        label_text(
            (
                ("version", __version__),
                ("driver_version", driver.driver_version),
                ("cuda_version", driver.cuda_version),
                ("nvml_version", driver.nvml_version),
            )
        )
    )
    yield build
    node = Family("gpu_node", "info", "The node this exporter runs on.")
    node.add(label_text((("hostname", snapshot.host.hostname),)))
    yield node
    info = Family("gpu", "info", "Identity of each GPU.")
    for gpu in gpus:
        sample = gpu.sample
        identity = label_text(
            (
                ("name", sample.name or ""),
                ("pci_bus_id", sample.pci_bus_id or ""),
                ("serial", sample.serial or ""),
            )
        )
        info.add(f"{gpu.labels},{identity}")
    yield info


def _gpu_families(gpus: tuple[_Gpu, ...]) -> Iterator[Family]:
    up = Family("gpu_up", "gauge", "1 if the GPU answers NVML, 0 if it is lost.")
    for gpu in gpus:
        up.add(gpu.labels, 1.0 if gpu.sample.up else 0.0)
    yield up
    for name, documentation, attribute in _GPU_GAUGES:
        family = Family(name, "gauge", documentation)
        for gpu in gpus:
            value = getattr(gpu.sample, attribute)
            if value is not None:
                family.add(gpu.labels, value)
        yield family
    yield _energy(gpus)
    yield _clocks(gpus)
    yield _ecc(gpus)
    yield _throttle(gpus)
    yield from _labelled(gpus)
    yield _pcie_replay(gpus)
    yield from _nvlink(gpus)
    yield from _mig(gpus)
    yield from _xid(gpus)
    yield from _gpm(gpus)


def _labelled(gpus: tuple[_Gpu, ...]) -> Iterator[Family]:
    for kind, name, documentation, label, members in _LABELLED:
        family = Family(name, kind, documentation)
        for gpu in gpus:
            for label_value, attribute in members:
                value = getattr(gpu.sample, attribute)
                if value is not None:
                    family.add(f'{gpu.labels},{label}="{label_value}"', value)
        yield family


def _pcie_replay(gpus: tuple[_Gpu, ...]) -> Family:
    replay = Family(
        "gpu_pcie_replay_errors", "counter", "PCIe packets replayed after a link error."
    )
    for gpu in gpus:
        if gpu.sample.pcie_replay_errors is not None:
            replay.add(gpu.labels, gpu.sample.pcie_replay_errors)
    return replay


def _nvlink(gpus: tuple[_Gpu, ...]) -> Iterator[Family]:
    up = Family("gpu_nvlink_up", "gauge", "1 if the NVLink link is active.")
    errors = Family("gpu_nvlink_errors", "counter", "NVLink errors on the link, by kind.")
    for gpu in gpus:
        if gpu.sample.nvlinks:
            ups, counts = _nvlink_samples(gpu.labels, gpu.sample.nvlinks)
            up.samples.extend(ups)
            errors.samples.extend(counts)
    yield up
    yield errors


# The sampler reads NVLink with the other health fields every 10 s and reuses the very tuple in
# between, so most renders find a GPU's links here: 90 samples a GPU at 18 links, half of all.
@functools.lru_cache(maxsize=64)
def _nvlink_samples(
    gpu_labels: str, links: tuple[NvLinkSample, ...]
) -> tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]:
    """The ``gpu_nvlink_up`` and ``gpu_nvlink_errors`` samples of one GPU's links."""
    up: list[tuple[str, float]] = []
    errors: list[tuple[str, float]] = []
    for link in links:
        labels = f'{gpu_labels},link="{link.link}"'
        if link.up is not None:
            up.append((labels, 1.0 if link.up else 0.0))
        for kind, attribute in _NVLINK_COUNTERS:
            value = getattr(link, attribute)
            if value is not None:
                errors.append((f'{labels},type="{kind}"', value))
    return tuple(up), tuple(errors)


def _mig(gpus: tuple[_Gpu, ...]) -> Iterator[Family]:
    info = Family("gpu_mig", "info", "A MIG device of a GPU in MIG mode, with its profile.")
    used = Family("gpu_mig_memory_used_bytes", "gauge", "Memory in use on the MIG device.")
    total = Family("gpu_mig_memory_total_bytes", "gauge", "Memory of the MIG device.")
    for gpu in gpus:
        for mig in gpu.sample.migs:
            labels = (
                f'{gpu.labels},mig_uuid="{escape(mig.uuid)}",'
                f'gi="{_id(mig.gpu_instance)}",ci="{_id(mig.compute_instance)}"'
            )
            info.add(f'{labels},profile="{escape(mig.profile)}"')
            if mig.memory_used_bytes is not None:
                used.add(labels, mig.memory_used_bytes)
            if mig.memory_total_bytes is not None:
                total.add(labels, mig.memory_total_bytes)
    yield info
    yield used
    yield total


def _gpm(gpus: tuple[_Gpu, ...]) -> Iterator[Family]:
    """GPM figures per GPU and per MIG device; a GPU without them has none of these series."""
    migs = [
        (mig.gpm, f'{gpu.labels},mig_uuid="{escape(mig.uuid)}",'
                  f'gi="{_id(mig.gpu_instance)}",ci="{_id(mig.compute_instance)}"')
        for gpu in gpus
        for mig in gpu.sample.migs
        if mig.gpm is not None
    ]  # fmt: skip
    whole = [(gpu.sample.gpm, gpu.labels) for gpu in gpus if gpu.sample.gpm is not None]
    for prefix, scopes in (("gpu_", whole), ("gpu_mig_", migs)):
        for suffix, documentation, attribute in _GPM_RATIOS:
            yield _attribute_family(prefix + suffix, documentation, attribute, scopes)
    for name, documentation, directions in _GPM_TRAFFIC:
        family = Family(name, "gauge", documentation)
        for figures, labels in whole:
            for direction, attribute in directions:
                value = getattr(figures, attribute)
                if value is not None:
                    family.add(f'{labels},direction="{direction}"', value)
        yield family
    status = Family(
        "gpu_exporter_gpm_status",
        "gauge",
        "1 for the state of the GPU's GPM figures: ok, not_supported (no GPM: before Hopper, or "
        "the driver), refused (the counters are held, e.g. by DCGM profiling) or error.",
    )
    for gpu in gpus:
        if gpu.sample.gpm_status is not None:
            for state in GPM_STATUSES:
                value = 1.0 if gpu.sample.gpm_status == state else 0.0
                status.add(f'{gpu.labels},status="{state}"', value)
    yield status


def _attribute_family(
    name: str, documentation: str, attribute: str, scopes: Iterable[tuple[Any, str]]
) -> Family:
    """A gauge of one attribute of each (object, labels) pair; an object without it is left
    out, never 0."""
    family = Family(name, "gauge", documentation)
    for source, labels in scopes:
        value = getattr(source, attribute)
        if value is not None:
            family.add(labels, value)
    return family


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


def _xid(gpus: tuple[_Gpu, ...]) -> Iterator[Family]:
    errors = Family(
        "gpu_xid_errors",
        "counter",
        "XID errors the driver reported since the exporter started, by XID code.",
    )
    last = Family("gpu_last_xid", "gauge", "Code of the last XID error.")
    when = Family(
        "gpu_last_xid_timestamp_seconds", "gauge", "Unix time the last XID error was seen."
    )
    for gpu in gpus:
        xid = gpu.sample.xid
        if xid is None:
            continue
        for code, count in xid.counts:
            errors.add(f'{gpu.labels},xid="{code}"', count)
        if xid.last_xid is not None and xid.last_timestamp_seconds is not None:
            last.add(gpu.labels, xid.last_xid)
            when.add(gpu.labels, xid.last_timestamp_seconds)
    yield errors
    yield last
    yield when


def _energy(gpus: tuple[_Gpu, ...]) -> Family:
    energy = Family("gpu_energy_joules", "counter", "Energy used since the driver loaded.")
    for gpu in gpus:
        if gpu.sample.energy_joules is not None:
            energy.add(gpu.labels, gpu.sample.energy_joules)
    return energy


def _clocks(gpus: tuple[_Gpu, ...]) -> Family:
    clocks = Family("gpu_clock_hertz", "gauge", "Current clock frequency.")
    for gpu in gpus:
        sample = gpu.sample
        for clock, value in (("sm", sample.clock_sm_hertz), ("memory", sample.clock_memory_hertz)):
            if value is not None:
                clocks.add(f'{gpu.labels},clock="{clock}"', value)
    return clocks


def _ecc(gpus: tuple[_Gpu, ...]) -> Family:
    ecc = Family("gpu_ecc_errors", "counter", "ECC memory errors since the driver loaded.")
    for gpu in gpus:
        for kind, value in (
            ("corrected", gpu.sample.ecc_corrected_errors),
            ("uncorrected", gpu.sample.ecc_uncorrected_errors),
        ):
            if value is not None:
                ecc.add(f'{gpu.labels},type="{kind}"', value)
    return ecc


def _throttle(gpus: tuple[_Gpu, ...]) -> Family:
    throttle = Family(
        "gpu_throttle_reason", "gauge", "1 while this reason is holding the clocks down."
    )
    for gpu in gpus:
        reasons = gpu.sample.throttle_reasons
        if reasons is not None:
            throttle.samples.extend(_throttle_samples(gpu.labels, reasons))
    return throttle


@functools.lru_cache(maxsize=256)
def _throttle_samples(gpu_labels: str, reasons: int) -> tuple[tuple[str, float], ...]:
    """One GPU's ``gpu_throttle_reason`` samples: the same few masks recur render after render."""
    return tuple(
        (f'{gpu_labels},reason="{reason}"', 1.0 if reasons & bit else 0.0)
        for bit, reason in THROTTLE_REASONS
    )


def _process_families(gpus: tuple[_Gpu, ...], *, include_commands: bool) -> Iterator[Family]:
    # Each process's gpu, uuid and pid labels, built once for all its series.
    processes = [
        (process, f'{gpu.labels},pid="{process.pid}"')
        for gpu in gpus
        for process in gpu.sample.processes
    ]
    memory = Family("gpu_process_memory_used_bytes", "gauge", "GPU memory held by a process.")
    info = Family(
        "gpu_process",
        "info",
        "A process using a GPU: the Slurm job, container and Kubernetes pod it belongs to "
        "(empty when not applicable), and its command line."
        if include_commands
        else "A process using a GPU: the Slurm job, container and Kubernetes pod it belongs to "
        "(empty when not applicable); command lines are not published here.",
    )
    for process, labels in processes:
        owner, identity = _process_labels(
            labels,
            process.user,
            process.mig_uuid,
            process.slurm_job,
            process.container,
            process.pod,
            process.namespace,
            process.command if include_commands else None,
        )
        if process.gpu_memory_bytes is not None:
            memory.add(owner, process.gpu_memory_bytes)
        info.add(identity)
    yield memory
    yield info
    for name, documentation, attribute in _PROCESS_UTILIZATION:
        yield _attribute_family(name, documentation, attribute, processes)


@functools.lru_cache(maxsize=4096)
def _process_labels(
    labels: str,
    user: str,
    mig_uuid: str,
    slurm_job: str,
    container: str,
    pod: str,
    namespace: str,
    command: str | None,
) -> tuple[str, str]:
    """A process's labels on its memory series and on ``gpu_process_info``, escaped once per
    process rather than once per render (``command`` None: not published)."""
    owner = f'{labels},user="{escape(user)}",mig_uuid="{escape(mig_uuid)}"'
    # "slurm_job", not "job": Prometheus owns the job and instance labels
    identity = [
        ("slurm_job", slurm_job),
        ("container", container),
        ("pod", pod),
        ("namespace", namespace),
    ]
    if command is not None:
        identity.append(("command", command))
    return owner, f"{owner},{label_text(identity)}"


def _self_families(snapshot: Snapshot) -> Iterator[Family]:
    success = Family(
        "gpu_exporter_collector_success", "gauge", "1 if the collector's last pass succeeded."
    )
    duration = Family(
        "gpu_exporter_collector_duration_seconds",
        "gauge",
        "How long the collector's last pass took.",
    )
    for status in snapshot.collectors:
        labels = f'collector="{escape(status.name)}"'
        success.add(labels, 1.0 if status.success else 0.0)
        duration.add(labels, status.duration_seconds)
    yield success
    yield duration
    collected = Family(
        "gpu_exporter_last_collect_timestamp_seconds",
        "gauge",
        "Unix time the last sampling pass finished; 0 before the first.",
    )
    collected.add("", snapshot.timestamp)
    yield collected


def snapshot_families(
    snapshot: Snapshot,
    *,
    include_processes: bool = True,
    include_commands: bool = False,
    dcgm_names: bool = False,
) -> Iterator[Family]:
    """Every metric family of one snapshot, built fresh; command lines only when asked for,
    dcgm-exporter's names beside the project's only when asked for."""
    gpus = tuple(_Gpu.of(gpu) for gpu in snapshot.gpus)
    yield from _identity_families(snapshot, gpus)
    yield from _gpu_families(gpus)
    if include_processes:
        yield from _process_families(gpus, include_commands=include_commands)
    yield from _self_families(snapshot)
    if dcgm_names:
        yield from dcgm_families(snapshot)


def render(
    snapshot: Snapshot,
    *,
    openmetrics: bool = False,
    include_processes: bool = True,
    include_commands: bool = False,
    dcgm_names: bool = False,
    cache: FamilyCache | None = None,
) -> bytes:
    """``snapshot`` in the Prometheus text format, or in OpenMetrics.

    ``cache`` keeps the text of the families whose samples did not change since it last saw them.
    """
    families = snapshot_families(
        snapshot,
        include_processes=include_processes,
        include_commands=include_commands,
        dcgm_names=dcgm_names,
    )
    if openmetrics:
        return openmetrics_format(families, cache)
    return text_format(families, cache)
