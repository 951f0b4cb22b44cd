"""Power and per-process attribution from a node's ``/metrics``, which the legacy JSON lacks.

The legacy ``/get-status`` schema is frozen (old scripts read it), so what the page shows beyond
it comes from the exporter's Prometheus metrics, read in one pass over one scrape:

* ``gpu_power_watts`` and ``gpu_power_limit_watts``: power per GPU index, and
  ``gpu_sm_active_ratio``: its SM activity (GPM, 0..1; absent on GPUs without GPM);
* ``gpu_process_info``: per process (GPU index, pid) its ``slurm_job``, ``container``, ``pod``,
  ``namespace`` and ``mig_uuid`` (empty when not applicable);
* ``gpu_process_sm_utilization_ratio``: per process its SM utilization, 0..1 (absent where NVML
  does not support it);
* per GPU index its health (:class:`GpuHealth`): ``gpu_up``, ``gpu_last_xid`` and
  ``gpu_last_xid_timestamp_seconds``, ``gpu_remapped_rows_pending`` and ``_failure``,
  ``gpu_retired_pages_pending``, ``gpu_pcie_link_generation``/``_width`` and their ``_max``,
  ``gpu_mig_mode`` and ``gpu_mig_mode_pending``. A field the node does not report stays None;
* per GPU index its MIG devices (:class:`MigDevice`), by ``mig_uuid``: ``gpu_mig_info`` (GPU and
  compute instance ids, profile), ``gpu_mig_memory_used_bytes`` and ``_total_bytes``. Any of the
  three names a device, so a line lost or reordered costs a field, not the device.

Only those lines are looked at; a node without ``/metrics`` (an old node_info.py) simply has none
of it. The text is untrusted like the JSON: anything unexpected is skipped, never raised, and
everything kept is bounded in count and length.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

MAX_GPUS = 1024
MAX_PROCESSES = 65536
MAX_MIGS_PER_GPU = 64  # an A100 or H100 has at most 7; room for later GPUs, not for a flood
MAX_LABEL = 256  # characters kept of an attribution label
ATTRIBUTION_LABELS = ("slurm_job", "container", "pod", "namespace")

# Per-GPU readings beside the legacy JSON: family -> (field, decimals kept).
_POWER = {
    b"gpu_power_watts": ("power", 1),
    b"gpu_power_limit_watts": ("power_limit", 1),
    b"gpu_sm_active_ratio": ("sm_active", 3),
}
_INFO = b"gpu_process_info"
_SM = b"gpu_process_sm_utilization_ratio"
_MIG_INFO = b"gpu_mig_info"
_MIG_MEMORY = {
    b"gpu_mig_memory_used_bytes": "memory_used_mib",
    b"gpu_mig_memory_total_bytes": "memory_total_mib",
}
_MIB = 1024 * 1024
# Health family -> (GpuHealth field, kind): "flag" is 0/1, "count" a whole number, "time" seconds.
_HEALTH = {
    b"gpu_up": ("up", "flag"),
    b"gpu_last_xid": ("last_xid", "count"),
    b"gpu_last_xid_timestamp_seconds": ("last_xid_at", "time"),
    b"gpu_remapped_rows_pending": ("remap_pending", "flag"),
    b"gpu_remapped_rows_failure": ("remap_failure", "flag"),
    b"gpu_retired_pages_pending": ("retired_pending", "flag"),
    b"gpu_pcie_link_generation": ("pcie_generation", "count"),
    b"gpu_pcie_link_generation_max": ("pcie_generation_max", "count"),
    b"gpu_pcie_link_width": ("pcie_width", "count"),
    b"gpu_pcie_link_width_max": ("pcie_width_max", "count"),
    b"gpu_mig_mode": ("mig_mode", "flag"),
    b"gpu_mig_mode_pending": ("mig_mode_pending", "flag"),
}
# The families an engine is asked for (status_api/promsource.py), and the labels read from them.
PROCESS_FAMILIES = (_INFO.decode(), _SM.decode())
HEALTH_FAMILIES = tuple(name.decode() for name in _HEALTH)
MIG_FAMILIES = (_MIG_INFO.decode(), *(name.decode() for name in _MIG_MEMORY))
_KEPT = frozenset(("gpu", "pid", "uuid", "mig_uuid", "gi", "ci", "profile", *ATTRIBUTION_LABELS))
_MAX_COUNT = 2**32  # XID codes are 32 bits; link generations and widths are far below
_MAX_BYTES = 2.0**63  # a MIG device's memory beyond this is nonsense, not a reading
# One scan for every family of interest at the start of a line; the name must be followed by
# "{", so gpu_remapped_rows{...} or gpu_up_something{...} never match a shorter family.
_LINE = re.compile(
    rb"(?:^|(?<=\n))(gpu_(?:p(?:ower_watts|ower_limit_watts|rocess_info|rocess_sm_utilization_ratio"
    rb"|cie_link_(?:generation|width)(?:_max)?)|up|last_xid(?:_timestamp_seconds)?"
    rb"|re(?:mapped_rows_(?:pending|failure)|tired_pages_pending)|sm_active_ratio"
    rb"|mig_(?:mode(?:_pending)?|info|memory_(?:used|total)_bytes)))"
    rb"\{((?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\.)*\",?\s*)*)\}[ \t]+([^ \t\n]+)"
)
_LABEL = re.compile(rb'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')
_INDEX = re.compile(rb"[0-9]{1,9}")
_UNESCAPE = {b"\\\\": "\\", b'\\"': '"', b"\\n": "\n"}


@dataclass
class ProcessMetrics:
    """What ``/metrics`` says about one process beyond the legacy JSON."""

    slurm_job: str = ""
    container: str = ""
    pod: str = ""
    namespace: str = ""
    mig_uuid: str = ""  # the MIG device it runs in; "" outside MIG
    sm_utilization: float | None = None  # 0..1; None when the node does not report it


@dataclass
class GpuHealth:
    """What ``/metrics`` says about one GPU's health; None where the node does not report it."""

    up: bool | None = None  # False: lost (fell off the bus) or its reads hang
    last_xid: int | None = None
    last_xid_at: float | None = None  # Unix time, by the node's clock
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    retired_pending: bool | None = None
    pcie_generation: int | None = None
    pcie_generation_max: int | None = None
    pcie_width: int | None = None
    pcie_width_max: int | None = None
    mig_mode: bool | None = None
    mig_mode_pending: bool | None = None


@dataclass
class MigDevice:
    """One MIG device (a compute instance inside a GPU instance); None where not reported."""

    uuid: str
    gpu_instance: int | None = None
    compute_instance: int | None = None
    profile: str = ""  # e.g. "3g.40gb"; "" without a gpu_mig_info line
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None

    def document(self) -> dict[str, str | int | None]:
        return {
            "uuid": self.uuid,
            "gpu_instance": self.gpu_instance,
            "compute_instance": self.compute_instance,
            "profile": self.profile,
            "memory_used_mib": self.memory_used_mib,
            "memory_total_mib": self.memory_total_mib,
        }


@dataclass
class NodeMetrics:
    """Power, uuid, health and MIG devices per GPU index, and attribution per (GPU index, pid)."""

    power: dict[int, dict[str, float]] = field(default_factory=dict)
    uuids: dict[int, str] = field(default_factory=dict)  # from the power lines' uuid label
    processes: dict[tuple[int, int], ProcessMetrics] = field(default_factory=dict)
    health: dict[int, GpuHealth] = field(default_factory=dict)
    # Per GPU index, ordered by GPU instance, then compute instance (unknown ids last).
    migs: dict[int, list[MigDevice]] = field(default_factory=dict)


def _labels(raw: bytes) -> dict[bytes, bytes]:
    return {match.group(1): match.group(2) for match in _LABEL.finditer(raw)}


def _index(labels: dict[bytes, bytes], name: bytes) -> int | None:
    raw = labels.get(name)
    return int(raw) if raw is not None and _INDEX.fullmatch(raw) else None


def _text(raw: bytes) -> str:
    """A label value, unescaped, decoded leniently and cut to :data:`MAX_LABEL` characters."""
    if b"\\" not in raw:  # most values: nothing to unescape
        return raw[: MAX_LABEL * 4].decode("utf-8", "replace")[:MAX_LABEL]
    unescaped = re.sub(rb'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)].encode(), raw[: MAX_LABEL * 4])
    return unescaped.decode("utf-8", "replace")[:MAX_LABEL]


def _value(raw: bytes) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _process(metrics: NodeMetrics, labels: dict[bytes, bytes]) -> ProcessMetrics | None:
    return _process_at(metrics, _index(labels, b"gpu"), _index(labels, b"pid"))


def _process_at(metrics: NodeMetrics, gpu: int | None, pid: int | None) -> ProcessMetrics | None:
    if gpu is None or pid is None:
        return None
    key = (gpu, pid)
    found = metrics.processes.get(key)
    if found is None:
        if len(metrics.processes) >= MAX_PROCESSES:
            return None
        found = metrics.processes[key] = ProcessMetrics()
    return found


def _health_value(kind: str, value: float) -> bool | int | float | None:
    """A health reading of ``kind``, or None when the value cannot be one."""
    if kind == "time":
        return value
    if not value.is_integer() or value >= _MAX_COUNT:
        return None
    if kind == "flag":
        return None if value > 1 else value == 1
    return int(value)


def _health(metrics: NodeMetrics, family: bytes, labels: dict[bytes, bytes], value: float) -> None:
    _health_at(metrics, family, _index(labels, b"gpu"), value)


def _health_at(metrics: NodeMetrics, family: bytes, gpu: int | None, value: float) -> None:
    name, kind = _HEALTH[family]
    reading = _health_value(kind, value)
    if gpu is None or reading is None:
        return
    found = metrics.health.get(gpu)
    if found is None:
        if len(metrics.health) >= MAX_GPUS:
            return
        found = metrics.health[gpu] = GpuHealth()
    setattr(found, name, reading)


def _mig(found: dict[int, dict[str, MigDevice]], labels: dict[bytes, bytes]) -> MigDevice | None:
    """The device a MIG line names (new or already seen), or None when the line names none or
    its GPU already has too many; the ids are taken from whichever line gives them."""
    gpu, uuid = _index(labels, b"gpu"), _text(labels.get(b"mig_uuid", b""))
    if gpu is None or not uuid:
        return None
    devices = found.get(gpu)
    if devices is None:
        if len(found) >= MAX_GPUS:
            return None
        devices = found[gpu] = {}
    device = devices.get(uuid)
    if device is None:
        if len(devices) >= MAX_MIGS_PER_GPU:
            return None
        device = devices[uuid] = MigDevice(uuid)
    gpu_instance, compute_instance = _index(labels, b"gi"), _index(labels, b"ci")
    if gpu_instance is not None:
        device.gpu_instance = gpu_instance
    if compute_instance is not None:
        device.compute_instance = compute_instance
    return device


def _mig_order(device: MigDevice) -> tuple[bool, int, bool, int, str]:
    gi, ci = device.gpu_instance, device.compute_instance
    return (gi is None, gi or 0, ci is None, ci or 0, device.uuid)


class _Reader:
    """Collects samples of the families of interest, from ``/metrics`` or from a query engine."""

    def __init__(self) -> None:
        self.metrics = NodeMetrics()
        self._migs: dict[int, dict[str, MigDevice]] = {}

    def add(self, family: bytes, labels: dict[bytes, bytes], value: float) -> None:
        """One sample; ``labels`` as the exposition text writes them (escaped), ``value`` finite
        and not negative."""
        metrics = self.metrics
        if family in _POWER:
            gpu = _index(labels, b"gpu")
            if gpu is None or (gpu not in metrics.power and len(metrics.power) >= MAX_GPUS):
                return
            name, decimals = _POWER[family]
            metrics.power.setdefault(gpu, {})[name] = round(value, decimals)
            if b"uuid" in labels:
                metrics.uuids[gpu] = _text(labels[b"uuid"])
        elif family == _INFO:
            process = _process(metrics, labels)
            if process is not None:
                for name in ATTRIBUTION_LABELS:
                    setattr(process, name, _text(labels.get(name.encode(), b"")))
                process.mig_uuid = _text(labels.get(b"mig_uuid", b""))
        elif family in _HEALTH:
            _health(metrics, family, labels, value)
        elif family == _SM and value <= 1:
            process = _process(metrics, labels)
            if process is not None:
                process.sm_utilization = round(value, 4)
        elif family == _MIG_INFO:
            device = _mig(self._migs, labels)
            if device is not None:
                device.profile = _text(labels.get(b"profile", b""))
        elif family in _MIG_MEMORY and value < _MAX_BYTES:
            device = _mig(self._migs, labels)
            if device is not None:
                setattr(device, _MIG_MEMORY[family], int(value) // _MIB)

    def done(self) -> NodeMetrics:
        self.metrics.migs = {
            gpu: sorted(devices.values(), key=_mig_order) for gpu, devices in self._migs.items()
        }
        return self.metrics


def parse_metrics(text: bytes) -> NodeMetrics:
    """Everything of interest in an exposition text, in one pass over it."""
    reader = _Reader()
    for match in _LINE.finditer(text):
        value = _value(match.group(3))
        if value is not None:
            reader.add(match.group(1), _labels(match.group(2)), value)
    return reader.done()


def _escaped(value: str) -> bytes:
    """A label value as the exposition text writes it, so both sources read it the same way."""
    if "\\" not in value and '"' not in value and "\n" not in value:
        return value.encode()
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").encode()


# What metrics_by_instance reads of an engine's sample: its family and labels as bytes, looked up.
_FAMILIES = {
    name.decode(): name for name in (*_POWER, _INFO, _SM, *_HEALTH, _MIG_INFO, *_MIG_MEMORY)
}
_KEPT_BYTES = {name: name.encode() for name in _KEPT}
# GPU indexes as the exporter writes them (what _index reads them as), looked up.
_INDEXES = {str(index): index for index in range(MAX_GPUS)}


def metrics_by_instance(
    samples: Iterable[tuple[dict[str, str], float]], instances: Container[str]
) -> dict[str, NodeMetrics]:
    """The same from a query engine's samples (``__name__`` and ``instance`` among the labels)
    for every node of ``instances`` that has any, in one pass: a node read through PromQL gets
    exactly what polling its ``/metrics`` gets."""
    readers: dict[str, _Reader] = {}
    families, kept, indexes = _FAMILIES, _KEPT_BYTES, _INDEXES
    for labels, number in samples:
        value = float(number)
        family = families.get(labels.get("__name__", ""))
        if family is None or not 0 <= value < math.inf:  # NaN fails the comparison too
            continue
        instance = labels.get("instance", "")
        reader = readers.get(instance)
        if reader is None:
            if instance not in instances:
                continue
            reader = readers[instance] = _Reader()
        # Most samples are health readings or SM utilization of a plain GPU index and pid:
        # read at once, without the labels written out as /metrics would have them.
        gpu = indexes.get(labels.get("gpu", ""))
        if gpu is not None and family in _HEALTH:
            _health_at(reader.metrics, family, gpu, value)
            continue
        if gpu is not None and family == _SM:
            pid = labels.get("pid", "")
            if pid.isascii() and pid.isdigit() and len(pid) <= 9:
                process = _process_at(reader.metrics, gpu, int(pid)) if value <= 1 else None
                if process is not None:
                    process.sm_utilization = round(value, 4)
                continue
        raw = {kept[name]: _escaped(text) for name, text in labels.items() if name in kept}
        reader.add(family, raw, value)
    return {instance: reader.done() for instance, reader in readers.items()}


def parse_power(text: bytes) -> dict[int, dict[str, float]]:
    """``{gpu index: {"power": W, "power_limit": W, "sm_active": 0..1}}`` from an exposition
    text."""
    return parse_metrics(text).power
