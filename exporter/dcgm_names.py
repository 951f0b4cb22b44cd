"""dcgm-exporter's names for the exporter's readings, for dashboards and alerts written for it.

With ``--metrics.dcgm-names`` the exporter publishes, beside its own families, the series
dcgm-exporter's default counter set would: the same names (``DCGM_FI_DEV_GPU_UTIL``, ...), units
(percent, MiB, MHz, mJ where dcgm-exporter uses them), types and labels, so that its community
dashboard (Grafana.com 12239) and alert rules written against those names work unchanged.

Only what the exporter reads is published, converted from the snapshot: a field the exporter does
not read (memory temperature, encoder and decoder utilization, NVML's PCIe throughput counters)
or a GPU cannot report has no series, never a made-up value.

Labels follow dcgm-exporter: ``gpu`` (the index), ``UUID``, ``pci_bus_id``, ``device``
(``nvidia<index>``), ``modelName``, ``Hostname`` and ``DCGM_FI_DRIVER_VERSION`` on every series;
``GPU_I_PROFILE`` and ``GPU_I_ID`` on the series of a MIG GPU instance; ``pod``, ``namespace`` and
``container`` (the Kubernetes container name) when the kubelet handed the GPU, or the instance, to
exactly one container. A GPU shared by several containers carries none: which of them a
GPU-wide reading belongs to cannot be told, and one series per container would count its power
and memory several times in every ``sum()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol, Union

from exporter.snapshot import GpmFigures, GpuSample, MigSample, PodContainer, Snapshot
from servicekit.exposition import Family, Kind, label_text

Reading = Union[float, int, bool, None]  # a snapshot field: a number, a flag, or absent

_MIB = 2**20
# "1c.3g.40gb" is a compute instance of a "3g.40gb" GPU instance; GPU_I_PROFILE names the latter.
_COMPUTE_INSTANCE_PREFIX = re.compile(r"^[0-9]+c\.")


def _same(value: float) -> float:
    return float(value)


def _percent(ratio: float) -> float:
    # rounded so that an integer percentage stays one: 0.57 * 100 is 56.99999999999999
    return round(ratio * 100, 9)


def _mib(size: float) -> float:
    return size / _MIB


def _mhz(hertz: float) -> float:
    return hertz / 1e6


def _millijoules(joules: float) -> float:
    # NVML counts whole millijoules; rounding undoes the float error of the joule scaling
    return round(joules * 1000, 3)


class _HasGpm(Protocol):
    @property
    def gpm(self) -> GpmFigures | None: ...


def _gpm(attribute: str) -> Callable[[_HasGpm], Reading]:
    """A reader of one GPM figure of a GPU or of a MIG GPU instance."""

    def read(scope: _HasGpm) -> Reading:
        figures = scope.gpm
        return None if figures is None else getattr(figures, attribute)

    return read


def _last_xid(sample: GpuSample) -> Reading:
    """The last XID code; 0, as DCGM reports it, while none has been seen since registration."""
    if sample.xid is None:  # the event watcher has not registered this GPU: nothing is known
        return None
    return sample.xid.last_xid or 0


@dataclass(frozen=True)
class DcgmField:
    """One dcgm-exporter family: how to read it from a GPU and, if it has one, a GPU instance."""

    name: str
    kind: Kind
    documentation: str
    of_gpu: Callable[[GpuSample], Reading]
    convert: Callable[[float], float] = _same
    of_instance: Callable[[MigSample], Reading] | None = None


def _profiling(
    name: str, documentation: str, attribute: str, *, per_instance: bool = True
) -> DcgmField:
    """A DCGM profiling field from a GPM figure, per GPU and, if GPM has it, per GPU instance."""
    read = _gpm(attribute)
    return DcgmField(name, "gauge", documentation, read, of_instance=read if per_instance else None)


# Our snapshot field -> dcgm-exporter's name, type and unit, in its default-counters order.
FIELDS: tuple[DcgmField, ...] = (
    DcgmField("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).",
              attrgetter("clock_sm_hertz"), _mhz),
    DcgmField("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).",
              attrgetter("clock_memory_hertz"), _mhz),
    DcgmField("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).",
              attrgetter("temperature_celsius")),
    DcgmField("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).",
              attrgetter("power_watts")),
    DcgmField("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "bare_counter",
              "Total energy consumption since the driver loaded (in mJ).",
              attrgetter("energy_joules"), _millijoules),
    DcgmField("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "bare_counter", "Total number of PCIe retries.",
              attrgetter("pcie_replay_errors")),
    DcgmField("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).",
              attrgetter("utilization_ratio"), _percent),
    DcgmField("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).",
              attrgetter("memory_utilization_ratio"), _percent),
    DcgmField("DCGM_FI_DEV_XID_ERRORS", "gauge",
              "Value of the last XID error seen since the exporter started (0: none).",
              _last_xid),
    DcgmField("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).",
              attrgetter("memory_free_bytes"), _mib),
    DcgmField("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).",
              attrgetter("memory_used_bytes"), _mib, attrgetter("memory_used_bytes")),
    DcgmField("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "bare_counter",
              "Number of remapped rows for uncorrectable errors.",
              attrgetter("remapped_rows_uncorrected")),
    DcgmField("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "bare_counter",
              "Number of remapped rows for correctable errors.",
              attrgetter("remapped_rows_corrected")),
    DcgmField("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed.",
              attrgetter("remapped_rows_failure")),
    # GPM gives DCGM's profiling fields in DCGM's units already: ratios from 0 to 1, bytes/s.
    _profiling("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active.",
               "graphics_active_ratio"),
    _profiling("DCGM_FI_PROF_SM_ACTIVE", "The ratio of cycles an SM has at least 1 warp assigned.",
               "sm_active_ratio"),
    _profiling("DCGM_FI_PROF_SM_OCCUPANCY", "The ratio of number of warps resident on an SM.",
               "sm_occupancy_ratio"),
    _profiling("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
               "Ratio of cycles the tensor (HMMA) pipe is active.", "tensor_active_ratio"),
    _profiling("DCGM_FI_PROF_DRAM_ACTIVE", "Ratio of cycles the device memory interface is "
               "active sending or receiving data.", "dram_active_ratio"),
    _profiling("DCGM_FI_PROF_PIPE_FP64_ACTIVE", "Ratio of cycles the fp64 pipes are active.",
               "fp64_active_ratio"),
    _profiling("DCGM_FI_PROF_PIPE_FP32_ACTIVE", "Ratio of cycles the fp32 pipes are active.",
               "fp32_active_ratio"),
    _profiling("DCGM_FI_PROF_PIPE_FP16_ACTIVE", "Ratio of cycles the fp16 pipes are active.",
               "fp16_active_ratio"),
    # NVML gives link traffic for the whole GPU only: no instance series
    _profiling("DCGM_FI_PROF_PCIE_TX_BYTES", "The rate of data transmitted over the PCIe bus, "
               "in bytes per second.", "pcie_tx_bytes_per_second", per_instance=False),
    _profiling("DCGM_FI_PROF_PCIE_RX_BYTES", "The rate of data received over the PCIe bus, "
               "in bytes per second.", "pcie_rx_bytes_per_second", per_instance=False),
    _profiling("DCGM_FI_PROF_NVLINK_TX_BYTES", "The rate of data transmitted over NVLink, "
               "in bytes per second.", "nvlink_tx_bytes_per_second", per_instance=False),
    _profiling("DCGM_FI_PROF_NVLINK_RX_BYTES", "The rate of data received over NVLink, "
               "in bytes per second.", "nvlink_rx_bytes_per_second", per_instance=False),
)  # fmt: skip


def _pod_labels(pods: tuple[PodContainer, ...]) -> list[tuple[str, str]]:
    """``pod``/``namespace``/``container`` of the one container holding a device, else none."""
    holders = set(pods)
    if len(holders) != 1:
        return []
    (holder,) = holders
    return [("pod", holder.pod), ("namespace", holder.namespace), ("container", holder.container)]


@dataclass(frozen=True)
class _Scope:
    """A GPU, or a MIG GPU instance of one, with its labels escaped once for all its series."""

    labels: str
    gpu: GpuSample
    instance: MigSample | None = None


def _scopes(snapshot: Snapshot) -> list[_Scope]:
    hostname = snapshot.host.hostname
    driver = snapshot.driver.driver_version
    scopes = []
    for gpu in snapshot.gpus:
        identity = [
            ("gpu", str(gpu.index)),
            ("UUID", gpu.uuid or ""),
            ("pci_bus_id", gpu.pci_bus_id or ""),
            ("device", f"nvidia{gpu.index}"),
            ("modelName", gpu.name or ""),
        ]
        node = [
            (name, value)
            for name, value in (("Hostname", hostname), ("DCGM_FI_DRIVER_VERSION", driver))
            if value
        ]
        scopes.append(_Scope(label_text(identity + node + _pod_labels(gpu.pods)), gpu))
        for instance, pods in _gpu_instances(gpu):
            profile = _COMPUTE_INSTANCE_PREFIX.sub("", instance.profile)
            mig = [("GPU_I_PROFILE", profile), ("GPU_I_ID", str(instance.gpu_instance))]
            labels = label_text(identity + mig + node + _pod_labels(pods))
            scopes.append(_Scope(labels, gpu, instance))
    return scopes


def _gpu_instances(gpu: GpuSample) -> Iterator[tuple[MigSample, tuple[PodContainer, ...]]]:
    """Each GPU instance once (by its first MIG device: they share memory and GPM figures),
    with the containers holding any of its MIG devices."""
    firsts: dict[int, MigSample] = {}
    pods: dict[int, tuple[PodContainer, ...]] = {}
    for mig in gpu.migs:
        if mig.gpu_instance is None:
            continue  # no GPU_I_ID to name it by
        firsts.setdefault(mig.gpu_instance, mig)
        pods[mig.gpu_instance] = pods.get(mig.gpu_instance, ()) + mig.pods
    for gpu_instance, first in firsts.items():
        yield first, pods[gpu_instance]


def dcgm_families(snapshot: Snapshot) -> Iterator[Family]:
    """dcgm-exporter's families for ``snapshot``: one per field, a sample per GPU (and per MIG
    GPU instance for the fields DCGM reports per instance) that has the reading."""
    scopes = _scopes(snapshot)
    for field in FIELDS:
        family = Family(field.name, field.kind, field.documentation)
        for scope in scopes:
            if scope.instance is None:
                value = field.of_gpu(scope.gpu)
            elif field.of_instance is not None:
                value = field.of_instance(scope.instance)
            else:
                continue
            if value is not None:
                family.add(scope.labels, field.convert(value))
        yield family
