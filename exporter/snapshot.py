"""The typed snapshot: the one schema every renderer reads.

A :class:`Snapshot` is built by the sampler from NVML and psutil and never mutated afterwards, so
any number of concurrent scrapes can render the same object without locks. ``None`` in a field
means "not available on this GPU / not readable right now"; renderers leave such fields out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Bits of nvmlClocksEventReasons (formerly "throttle reasons"), in NVML's order, and the label
# values the exporter publishes for them.
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x0000000000000001, "gpu_idle"),
    (0x0000000000000002, "applications_clocks_setting"),
    (0x0000000000000004, "sw_power_cap"),
    (0x0000000000000008, "hw_slowdown"),
    (0x0000000000000010, "sync_boost"),
    (0x0000000000000020, "sw_thermal_slowdown"),
    (0x0000000000000040, "hw_thermal_slowdown"),
    (0x0000000000000080, "hw_power_brake_slowdown"),
    (0x0000000000000100, "display_clock_setting"),
)


@dataclass(frozen=True)
class ProcessSample:
    """One process holding memory (or a context) on one GPU."""

    pid: int
    kind: str  # "compute" or "graphics"
    gpu_memory_bytes: int | None
    user: str = ""  # empty when the owner cannot be read (other PID namespace, exited)
    command: str = ""
    # On a GPU in MIG mode: the instance the process runs in, and that MIG device's uuid.
    gpu_instance: int | None = None
    compute_instance: int | None = None
    mig_uuid: str = ""
    # Who the process belongs to beyond its user (exporter.attribution); empty when not
    # applicable or unreadable. ``pod`` is the pod's name when the kubelet names the one
    # container holding this GPU, else the pod uid from the cgroup; ``namespace`` comes from the
    # kubelet only.
    slurm_job: str = ""
    container: str = ""
    pod: str = ""
    namespace: str = ""
    # nvmlDeviceGetProcessUtilization over the last sample period (0-1); None when the GPU does
    # not report it.
    sm_utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    encoder_utilization_ratio: float | None = None
    decoder_utilization_ratio: float | None = None


@dataclass(frozen=True)
class GpmFigures:
    """GPU Performance Monitoring between two samples of one GPU or MIG GPU instance.

    Activities are shares of the period from 0 to 1 (NVML gives percentages); traffic is in
    bytes per second. ``None``: NVML did not give that figure for this GPU or instance.
    """

    sm_active_ratio: float | None = None
    sm_occupancy_ratio: float | None = None
    tensor_active_ratio: float | None = None
    dram_active_ratio: float | None = None
    fp64_active_ratio: float | None = None
    fp32_active_ratio: float | None = None
    fp16_active_ratio: float | None = None
    graphics_active_ratio: float | None = None
    pcie_tx_bytes_per_second: float | None = None
    pcie_rx_bytes_per_second: float | None = None
    nvlink_tx_bytes_per_second: float | None = None
    nvlink_rx_bytes_per_second: float | None = None


# Why a GPU has no GPM figures, as gpu_exporter_gpm_status publishes it.
GPM_STATUSES = ("ok", "not_supported", "refused", "error")


@dataclass(frozen=True)
class MigSample:
    """One MIG device (a compute instance inside a GPU instance) of a GPU in MIG mode."""

    uuid: str
    gpu_instance: int | None = None
    compute_instance: int | None = None
    profile: str = ""  # what follows "MIG " in the device name, e.g. "3g.40gb"
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    gpm: GpmFigures | None = None  # its GPU instance's; shared by the instance's MIG devices
    pods: tuple[PodContainer, ...] = ()  # the containers the kubelet handed this MIG device to


@dataclass(frozen=True)
class NvLinkSample:
    """One NVLink link: its state and error counters (each ``None`` when not readable)."""

    link: int
    up: bool | None = None
    crc_flit_errors: int | None = None
    crc_data_errors: int | None = None
    replay_errors: int | None = None
    recovery_errors: int | None = None


@dataclass(frozen=True)
class XidSample:
    """XID errors seen on one GPU since the exporter started: counts per code, and the last."""

    counts: tuple[tuple[int, int], ...] = ()  # (xid code, times seen), by code
    last_xid: int | None = None
    last_timestamp_seconds: float | None = None


@dataclass(frozen=True)
class GpuSample:
    """One GPU as read in one sampling pass; identity first, then readings."""

    index: int
    up: bool
    uuid: str | None = None
    name: str | None = None
    serial: str | None = None
    pci_bus_id: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    fan_speed_ratio: float | None = None
    clock_sm_hertz: float | None = None
    clock_memory_hertz: float | None = None
    performance_state: int | None = None
    ecc_corrected_errors: int | None = None
    ecc_uncorrected_errors: int | None = None
    throttle_reasons: int | None = None  # raw bitmask, decoded with THROTTLE_REASONS
    # Lifetime ECC counters (NVML_AGGREGATE_ECC), beside the volatile ones above.
    ecc_aggregate_corrected_errors: int | None = None
    ecc_aggregate_uncorrected_errors: int | None = None
    # Row remapping (Ampere and later) ...
    remapped_rows_corrected: int | None = None
    remapped_rows_uncorrected: int | None = None
    remapped_rows_pending: bool | None = None  # a reset is needed to apply a remap
    remapped_rows_failure: bool | None = None  # remapping failed: replace the GPU
    # ... or page retirement (before Ampere).
    retired_pages_single_bit: int | None = None
    retired_pages_double_bit: int | None = None
    retired_pages_pending: bool | None = None
    pcie_replay_errors: int | None = None
    pcie_link_generation: int | None = None
    pcie_link_generation_max: int | None = None
    pcie_link_width: int | None = None
    pcie_link_width_max: int | None = None
    pcie_tx_bytes_per_second: float | None = None  # only with the opt-in throughput reading
    pcie_rx_bytes_per_second: float | None = None
    nvlinks: tuple[NvLinkSample, ...] = ()
    mig_mode: bool | None = None  # current MIG mode; None on GPUs without MIG
    mig_mode_pending: bool | None = None  # the mode after the next reset
    migs: tuple[MigSample, ...] = ()
    xid: XidSample | None = None  # None until the event watcher has registered this GPU
    processes: tuple[ProcessSample, ...] = ()
    # GPU Performance Monitoring: one of GPM_STATUSES (None: GPM is turned off), and the figures
    # between this pass's sample and the last (None until two samples exist).
    gpm_status: str | None = None
    gpm: GpmFigures | None = None
    # The containers the kubelet handed this GPU to (several when it is shared); empty without
    # a kubelet socket, and when the kubelet was not asked (no process, no --metrics.dcgm-names).
    pods: tuple[PodContainer, ...] = ()


@dataclass(frozen=True)
class DriverInfo:
    """Versions reported once per NVML session."""

    driver_version: str = ""
    cuda_version: str = ""
    nvml_version: str = ""


@dataclass(frozen=True)
class HostInfo:
    """Facts about the node itself, shown even when NVML is unavailable."""

    hostname: str
    ips: tuple[tuple[str, str], ...] = ()  # (interface, IPv4 address)


@dataclass(frozen=True)
class CollectorStatus:
    """How one collection step went, for the exporter's self metrics."""

    name: str
    success: bool
    duration_seconds: float


@dataclass(frozen=True)
class Snapshot:
    """Everything one sampling pass saw. ``timestamp`` is the Unix time the pass finished."""

    timestamp: float
    host: HostInfo
    driver: DriverInfo = field(default_factory=DriverInfo)
    gpus: tuple[GpuSample, ...] = ()
    collectors: tuple[CollectorStatus, ...] = ()
    sequence: int = 0  # increases by one per published snapshot; renderers cache by it


def empty_snapshot(host: HostInfo) -> Snapshot:
    """The snapshot served before the first sampling pass completes."""
    return Snapshot(timestamp=0.0, host=host)


@dataclass(frozen=True)
class Attribution:
    """Who a process belongs to beyond its user, read from its cgroup path.

    Empty strings mean "not part of one" (or not recognisable). ``slurm_job`` is the job id as
    Slurm prints it; ``container`` the container id cut to 12 hex digits, as ``docker ps`` shows
    it; ``pod_uid`` the Kubernetes pod's metadata.uid in its usual dashed form.
    """

    slurm_job: str = ""
    container: str = ""
    pod_uid: str = ""

    def __bool__(self) -> bool:
        return bool(self.slurm_job or self.container or self.pod_uid)


NO_ATTRIBUTION = Attribution()


@dataclass(frozen=True)
class PodContainer:
    """One Kubernetes container, as the kubelet names it when it hands out a device."""

    namespace: str
    pod: str
    container: str
