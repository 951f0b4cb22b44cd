"""Reading GPUs through NVML, each field on its own.

An :class:`NvmlSession` owns the NVML lifetime: it initialises once, retries with exponential
backoff while the library or driver is missing, and re-initialises after a driver reload. A field
that raises (NOT_SUPPORTED, any other NVML error, undecodable text) becomes ``None`` for that GPU
only; ``GPU_IS_LOST`` on any call marks the whole GPU as down while the other GPUs keep reporting.

Per-process utilization (``nvmlDeviceGetProcessUtilization``) returns only samples newer than the
timestamp the caller passes, so the caller keeps the newest stamp seen per GPU between passes.
NOT_FOUND there means "nothing ran since": every listed process reads 0; NOT_SUPPORTED (or any
other error) means the GPU cannot tell, and the fields stay absent.

NOT_SUPPORTED is the device's answer for good, so a GPU's getter that gave it is remembered in the
caller's :class:`Unsupported` and not called again, which spares raising and catching an
exception per field and pass; any other error (UNKNOWN, TIMEOUT, ...) is transient and the field
is asked again next pass. The sampler starts a new :class:`Unsupported` after an NVML re-init,
when a GPU comes back or changes MIG mode, and every few minutes.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import functools
import logging
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import pynvml

from exporter.snapshot import DriverInfo, GpuSample, MigSample, NvLinkSample

log = logging.getLogger(__name__)

T = TypeVar("T")

_MIB = 1024 * 1024
_MHZ = 1_000_000.0
_SLOWEST_PSTATE = 15  # pynvml.NVML_PSTATE_15
_KB = 1000  # NVML reports PCIe throughput in KB/s
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId of a process outside MIG
_MAX_MIG_DEVICES = 7  # NVML's ceiling per GPU; a bad count cannot make us loop long

# NVLink error counters by link: NVML has per-link field ids for links 0-11 only.
_NVLINK_COUNTER_LINKS = 12
_NVLINK_COUNTERS: tuple[tuple[str, int, int], ...] = (
    # (NvLinkSample attribute, field id of link 0, field id of link 6)
    ("crc_flit_errors", pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L0,
     pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L6),
    ("crc_data_errors", pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L0,
     pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L6),
    ("replay_errors", pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_L0,
     pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_L6),
    ("recovery_errors", pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_L0,
     pynvml.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_L6),
)  # fmt: skip

# Errors meaning "the library or the driver is gone": the session must be re-initialised.
_SESSION_ERRORS = frozenset(
    {
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    }
)


class GpuLostError(Exception):
    """NVML answered GPU_IS_LOST for this GPU: it fell off the bus or stopped responding."""


@dataclass(frozen=True)
class RawProcess:
    """A process as NVML lists it, before psutil adds user and command."""

    pid: int
    kind: str
    gpu_memory_bytes: int | None
    gpu_instance: int | None = None  # MIG instance ids; None outside MIG
    compute_instance: int | None = None


@dataclass(frozen=True)
class ProcessUtilization:
    """One process's share of the last sample period (0-1) per engine."""

    sm: float
    memory: float
    encoder: float
    decoder: float


IDLE_PROCESS = ProcessUtilization(0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class GpuReading:
    """What NVML says about one GPU: the snapshot fields plus the raw process list.

    ``process_utilization`` is ``None`` when the GPU does not report it; a pid it lacks ran
    nothing since the last pass. ``utilization_seen`` is the stamp to pass next time.
    """

    sample: GpuSample
    processes: tuple[RawProcess, ...] = ()
    process_utilization: dict[int, ProcessUtilization] | None = None
    utilization_seen: int = 0
    health: Mapping[str, Any] = field(default_factory=dict)  # the health fields, to pass back


class Unsupported:
    """The getters one GPU answered NOT_SUPPORTED, each with its arguments after the handle.

    Only calls on the GPU's own handle are remembered: a MIG device's handle is another device.
    One read of the GPU uses it at a time (the sampler never runs two reads of one GPU).
    """

    __slots__ = ("calls", "mig_mode", "mig_mode_known")

    def __init__(self) -> None:
        self.calls: set[Hashable] = set()
        # The MIG mode of the GPU's first read with this set: a change alters what it supports.
        self.mig_mode_known = False
        self.mig_mode: bool | None = None


@dataclass(frozen=True)
class _Probing:
    """The GPU handle whose calls are remembered in ``unsupported`` during one read."""

    handle: Any
    unsupported: Unsupported


# Set for the duration of one read_gpu, in the thread that runs it.
_PROBING: contextvars.ContextVar[_Probing | None] = contextvars.ContextVar("probing", default=None)


def _memo(read: Callable[..., Any], args: tuple[Any, ...]) -> tuple[set[Hashable], Hashable] | None:
    """Where ``read(*args)`` is remembered and under which key; None for a call not on the GPU."""
    probing = _PROBING.get()
    if probing is None or not args or args[0] is not probing.handle:
        return None
    key = (read, args[1:])
    try:
        hash(key)
    except TypeError:  # an argument that is a list: such a call is not remembered
        return None
    return probing.unsupported.calls, key


def _remember(memo: tuple[set[Hashable], Hashable] | None, error: pynvml.NVMLError) -> None:
    if memo is not None and error.value == pynvml.NVML_ERROR_NOT_SUPPORTED:
        memo[0].add(memo[1])


def _field(read: Callable[..., T], *args: Any) -> T | None:
    """Call one NVML getter; ``None`` on any failure except a lost GPU, which propagates."""
    memo = _memo(read, args)
    if memo is not None and memo[1] in memo[0]:
        return None  # NOT_SUPPORTED before
    try:
        return read(*args)
    except pynvml.NVMLError as error:
        if error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
            raise GpuLostError from error
        _remember(memo, error)
        return None
    except Exception:  # a malformed answer (e.g. undecodable bytes) costs this field only
        log.debug("NVML getter %s failed", getattr(read, "__name__", read), exc_info=True)
        return None


def _text(read: Callable[..., Any], *args: Any) -> str | None:
    """Read a string field without pynvml's strict UTF-8 decode, so odd bytes cannot hide it."""
    raw = _field(getattr(read, "__wrapped__", read), *args)
    if raw is None:
        return None
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return str(raw)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _memory(handle: Any) -> tuple[int | None, int | None, int | None]:
    """Total, used, free bytes; v2 (which separates reserved memory) where the driver has it."""
    info = _field(pynvml.nvmlDeviceGetMemoryInfo, handle, pynvml.nvmlMemory_v2)
    if info is None:
        info = _field(pynvml.nvmlDeviceGetMemoryInfo, handle)
    if info is None:
        return None, None, None
    return int(info.total), int(info.used), int(info.free)


def _throttle_reasons(handle: Any) -> int | None:
    reasons = _field(pynvml.nvmlDeviceGetCurrentClocksEventReasons, handle)
    if reasons is None:  # drivers older than 535 only know the old name
        reasons = _field(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, handle)
    return None if reasons is None else int(reasons)


def _merged(first: RawProcess, second: RawProcess) -> RawProcess:
    readings = [m for m in (first.gpu_memory_bytes, second.gpu_memory_bytes) if m is not None]
    return dataclasses.replace(first, gpu_memory_bytes=max(readings) if readings else None)


# A number field of a pynvml structure, read past the ``__getattribute__`` its structures define
# in Python to decode text (about 1 us a read; a ctypes field alone costs a tenth of that).
_number: Callable[[Any, str], Any] = object.__getattribute__


def _instance(value: int) -> int | None:
    return None if value == _NO_INSTANCE else int(value)


# NVML's process lists, asked as pynvml asks them (a size query, then a call with room to spare)
# but read as plain numbers: pynvml makes each entry an object through its Python
# ``__getattribute__``, 7 us a process, which was half of reading a GPU with 8 processes.
_PROCESS_LISTS = (
    ("compute", "nvmlDeviceGetComputeRunningProcesses_v3"),
    ("graphics", "nvmlDeviceGetGraphicsRunningProcesses_v3"),
)
_MEMORY_NOT_AVAILABLE = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value  # usedGpuMemory under WDDM


def _running(handle: Any, entry_point: str) -> list[tuple[int, int | None, int, int]]:
    """(pid, used GPU memory, GPU instance, compute instance) of each process listed."""
    call = pynvml._nvmlGetFunctionPointer(entry_point)
    count = ctypes.c_uint(0)
    returned = call(handle, ctypes.byref(count), None)
    if returned == pynvml.NVML_SUCCESS:
        return []  # no process
    if returned != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
        raise pynvml.NVMLError(returned)
    count.value = count.value * 2 + 5  # room for processes that start between the two calls
    infos = (pynvml.c_nvmlProcessInfo_t * count.value)()
    returned = call(handle, ctypes.byref(count), infos)
    if returned != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(returned)
    listed = []
    for info in infos[: count.value]:
        used = _number(info, "usedGpuMemory")
        listed.append(
            (
                _number(info, "pid"),
                None if used == _MEMORY_NOT_AVAILABLE else used,
                _number(info, "gpuInstanceId"),
                _number(info, "computeInstanceId"),
            )
        )
    return listed


def _processes(handle: Any) -> tuple[RawProcess, ...]:
    """Compute and graphics processes, one entry per pid.

    A process with both kinds of context appears in both lists with the same memory figure;
    it is one process holding that memory, so it is reported once, as compute.
    """
    by_pid: dict[int, RawProcess] = {}
    for kind, entry_point in _PROCESS_LISTS:
        for pid, used, gpu_instance, compute_instance in (
            _field(_running, handle, entry_point) or ()
        ):
            process = RawProcess(
                pid,
                kind,
                used,
                gpu_instance=_instance(gpu_instance),
                compute_instance=_instance(compute_instance),
            )
            by_pid[pid] = _merged(by_pid[pid], process) if pid in by_pid else process
    return tuple(by_pid.values())


def _percent(value: Any) -> float:
    return min(max(int(value), 0), 100) / 100.0


def _process_utilization(
    handle: Any, since: int
) -> tuple[dict[int, ProcessUtilization] | None, int]:
    """Samples newer than ``since`` (the newest per pid), and the newest stamp seen."""
    memo = _memo(pynvml.nvmlDeviceGetProcessUtilization, (handle,))
    if memo is not None and memo[1] in memo[0]:
        return None, since  # NOT_SUPPORTED before
    try:
        # pynvml does NVML's two calls: the size query, then the read into a buffer that size
        samples = pynvml.nvmlDeviceGetProcessUtilization(handle, since)
    except pynvml.NVMLError as error:
        if error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
            raise GpuLostError from error
        if error.value in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_SUCCESS):
            return {}, since  # no sample newer than ``since``: nothing ran
        _remember(memo, error)
        return None, since
    except Exception:  # a malformed answer costs these fields only
        log.debug("nvmlDeviceGetProcessUtilization failed", exc_info=True)
        return None, since
    newest: dict[int, tuple[int, Any]] = {}
    seen = since
    for sample in samples:
        pid, stamp = int(_number(sample, "pid")), int(_number(sample, "timeStamp"))
        seen = max(seen, stamp)
        if pid not in newest or stamp >= newest[pid][0]:
            newest[pid] = (stamp, sample)
    utilization = {
        pid: _shares(
            _number(s, "smUtil"),
            _number(s, "memUtil"),
            _number(s, "encUtil"),
            _number(s, "decUtil"),
        )
        for pid, (_, s) in newest.items()
    }
    return utilization, seen


@functools.lru_cache(maxsize=4096)
def _shares(sm: int, memory: int, encoder: int, decoder: int) -> ProcessUtilization:
    """The (immutable) utilization for NVML's percentages: the same few recur pass after pass."""
    return ProcessUtilization(_percent(sm), _percent(memory), _percent(encoder), _percent(decoder))


def _utilization(handle: Any) -> tuple[float | None, float | None]:
    rates = _field(pynvml.nvmlDeviceGetUtilizationRates, handle)
    if rates is None:
        return None, None
    return rates.gpu / 100.0, rates.memory / 100.0


def _performance_state(handle: Any) -> int | None:
    """P0 (fastest) to P15; NVML answers NVML_PSTATE_UNKNOWN (32) when it cannot tell."""
    state = _field(pynvml.nvmlDeviceGetPerformanceState, handle)
    if state is None or not 0 <= state <= _SLOWEST_PSTATE:
        return None
    return int(state)


def _ecc(handle: Any, error_type: int) -> int | None:
    # Volatile counts (since the driver loaded) behave as a Prometheus counter with resets.
    return _field(pynvml.nvmlDeviceGetTotalEccErrors, handle, error_type, pynvml.NVML_VOLATILE_ECC)


def _aggregate_ecc(handle: Any, error_type: int) -> int | None:
    return _field(pynvml.nvmlDeviceGetTotalEccErrors, handle, error_type, pynvml.NVML_AGGREGATE_ECC)


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _remapped_rows(handle: Any) -> dict[str, Any]:
    rows = _field(pynvml.nvmlDeviceGetRemappedRows, handle)
    if rows is None:
        return {}
    corrected, uncorrected, pending, failure = rows
    return {
        "remapped_rows_corrected": int(corrected),
        "remapped_rows_uncorrected": int(uncorrected),
        "remapped_rows_pending": bool(pending),
        "remapped_rows_failure": bool(failure),
    }


def _retired_pages(handle: Any) -> dict[str, Any]:
    def pages(cause: int) -> int | None:
        found = _field(pynvml.nvmlDeviceGetRetiredPages, handle, cause)
        return None if found is None else len(found)

    return {
        "retired_pages_single_bit": pages(
            pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
        ),
        "retired_pages_double_bit": pages(pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
        "retired_pages_pending": _flag(
            _field(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        ),
    }


def _pcie(handle: Any, *, throughput: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "pcie_replay_errors": _field(pynvml.nvmlDeviceGetPcieReplayCounter, handle),
        "pcie_link_generation": _field(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
        "pcie_link_generation_max": _field(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
        "pcie_link_width": _field(pynvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
        "pcie_link_width_max": _field(pynvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
    }
    if throughput:  # each call samples the link for 20 ms, hence opt-in
        for key, counter in (
            ("pcie_tx_bytes_per_second", pynvml.NVML_PCIE_UTIL_TX_BYTES),
            ("pcie_rx_bytes_per_second", pynvml.NVML_PCIE_UTIL_RX_BYTES),
        ):
            fields[key] = _scaled(_field(pynvml.nvmlDeviceGetPcieThroughput, handle, counter), _KB)
    return fields


def _nvlink_field_id(first: int, sixth: int, link: int) -> int:
    return first + link if link < 6 else sixth + link - 6


# Each link's counter field ids, by link, in NvLinkSample's order of counters.
_NVLINK_LINK_FIELDS: tuple[tuple[tuple[str, int], ...], ...] = tuple(
    tuple((name, _nvlink_field_id(first, sixth, link)) for name, first, sixth in _NVLINK_COUNTERS)
    for link in range(_NVLINK_COUNTER_LINKS)
)
# As (field id, scope id) pairs: pynvml takes a bare id only after failing to unpack it as a pair,
# an exception per field and call. Scope 0 is what a bare id gets.
_NVLINK_FIELD_IDS: tuple[tuple[int, int], ...] = tuple(
    (field_id, 0)
    for field_id in (
        pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT,
        *(field_id for fields in _NVLINK_LINK_FIELDS for _, field_id in fields),
    )
)
_NO_COUNTERS = {attribute: None for attribute, _, _ in _NVLINK_COUNTERS}


def _nvlinks(handle: Any) -> tuple[NvLinkSample, ...]:
    """Every link's counters in one field-values call; each field answers on its own."""
    answers = _field(pynvml.nvmlDeviceGetFieldValues, handle, _NVLINK_FIELD_IDS)
    if answers is None:
        return ()
    by_id = {
        int(_number(answer, "fieldId")): _field_value(answer)
        for answer in answers
        if _number(answer, "nvmlReturn") == pynvml.NVML_SUCCESS
    }
    count = by_id.get(pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT)
    if not count:
        return ()
    links = []
    for link in range(int(count)):
        counters = (
            {attribute: by_id.get(field_id) for attribute, field_id in _NVLINK_LINK_FIELDS[link]}
            if link < _NVLINK_COUNTER_LINKS
            else _NO_COUNTERS
        )
        state = _field(pynvml.nvmlDeviceGetNvLinkState, handle, link)
        links.append(NvLinkSample(link=link, up=_flag(state), **counters))
    return tuple(links)


_VALUE_MEMBERS = {
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
}


def _field_value(answer: Any) -> int | None:
    member = _VALUE_MEMBERS.get(int(_number(answer, "valueType")))
    return None if member is None else int(_number(_number(answer, "value"), member))


def _mig_mode(handle: Any) -> tuple[bool | None, bool | None]:
    modes = _field(pynvml.nvmlDeviceGetMigMode, handle)
    if modes is None:
        return None, None
    return bool(modes[0]), bool(modes[1])


def _mig_devices(handle: Any) -> tuple[MigSample, ...]:
    count = _field(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
    devices = []
    for position in range(min(int(count), _MAX_MIG_DEVICES)):
        # Indices may have holes (instances destroyed): NOT_FOUND skips one, not the rest.
        mig = _field(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, position)
        if mig is None:
            continue
        uuid = _text(pynvml.nvmlDeviceGetUUID, mig)
        if uuid is None:
            continue
        name = _text(pynvml.nvmlDeviceGetName, mig) or ""
        total, used, _free = _memory(mig)
        devices.append(
            MigSample(
                uuid=uuid,
                gpu_instance=_field(pynvml.nvmlDeviceGetGpuInstanceId, mig),
                compute_instance=_field(pynvml.nvmlDeviceGetComputeInstanceId, mig),
                profile=name.split("MIG ", 1)[1] if "MIG " in name else "",
                memory_used_bytes=used,
                memory_total_bytes=total,
            )
        )
    return tuple(devices)


def read_gpu(
    index: int,
    *,
    pcie_throughput: bool = False,
    utilization_since: int | None = None,
    health: Mapping[str, Any] | None = None,
    unsupported: Unsupported | None = None,
) -> GpuReading:
    """Read every field of GPU ``index``; a lost GPU comes back with ``up=False``.

    ``utilization_since`` is the newest per-process utilization stamp seen on this GPU (0 for
    none yet); ``None`` skips per-process utilization. ``health`` is an earlier reading's
    :attr:`GpuReading.health` to reuse instead of reading those fields again. ``unsupported``
    remembers, from one read to the next, the getters this GPU answered NOT_SUPPORTED.
    """
    token: contextvars.Token[_Probing | None] | None = None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        if unsupported is not None:
            token = _PROBING.set(_Probing(handle, unsupported))
        return _read_handle(
            index,
            handle,
            pcie_throughput=pcie_throughput,
            utilization_since=utilization_since,
            health=health,
        )
    except GpuLostError:
        return GpuReading(GpuSample(index=index, up=False))
    except pynvml.NVMLError as error:
        if error.value in _SESSION_ERRORS:
            raise
        log.debug("GPU %d: no handle (%s)", index, error)
        return GpuReading(GpuSample(index=index, up=False))
    finally:
        if token is not None:
            _PROBING.reset(token)


def _health(handle: Any, *, pcie_throughput: bool) -> dict[str, Any]:
    """The health readings that change rarely: memory repair, aggregate ECC, PCIe, NVLink.

    They cost about as much as every other field together (NVLink alone is a field-values call
    and one state call per link), so the sampler reads them every few seconds, not every pass;
    XID errors, the urgent kind, come from NVML events as they happen.
    """
    return {
        "ecc_aggregate_corrected_errors": _aggregate_ecc(
            handle, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
        ),
        "ecc_aggregate_uncorrected_errors": _aggregate_ecc(
            handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        ),
        **_remapped_rows(handle),
        **_retired_pages(handle),
        **_pcie(handle, throughput=pcie_throughput),
        "nvlinks": _nvlinks(handle),
    }


def _read_handle(
    index: int,
    handle: Any,
    *,
    pcie_throughput: bool,
    utilization_since: int | None,
    health: Mapping[str, Any] | None,
) -> GpuReading:
    if health is None:
        health = _health(handle, pcie_throughput=pcie_throughput)
    total, used, free = _memory(handle)
    mig_mode, mig_mode_pending = _mig_mode(handle)
    utilization, memory_utilization = _utilization(handle)
    pci = _field(pynvml.nvmlDeviceGetPciInfo, handle)
    fan = _field(pynvml.nvmlDeviceGetFanSpeed, handle)
    sample = GpuSample(
        index=index,
        up=True,
        uuid=_text(pynvml.nvmlDeviceGetUUID, handle),
        name=_text(pynvml.nvmlDeviceGetName, handle),
        serial=_text(pynvml.nvmlDeviceGetSerial, handle),
        pci_bus_id=None if pci is None else _decode(pci.busId),
        memory_total_bytes=total,
        memory_used_bytes=used,
        memory_free_bytes=free,
        utilization_ratio=utilization,
        memory_utilization_ratio=memory_utilization,
        temperature_celsius=_field(
            pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU
        ),
        power_watts=_scaled(_field(pynvml.nvmlDeviceGetPowerUsage, handle), 1e-3),
        power_limit_watts=_scaled(_field(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle), 1e-3),
        energy_joules=_scaled(_field(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle), 1e-3),
        fan_speed_ratio=None if fan is None else fan / 100.0,
        clock_sm_hertz=_scaled(_field(pynvml.nvmlDeviceGetClockInfo, handle, 1), _MHZ),
        clock_memory_hertz=_scaled(_field(pynvml.nvmlDeviceGetClockInfo, handle, 2), _MHZ),
        performance_state=_performance_state(handle),
        ecc_corrected_errors=_ecc(handle, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
        ecc_uncorrected_errors=_ecc(handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        throttle_reasons=_throttle_reasons(handle),
        **health,
        mig_mode=mig_mode,
        mig_mode_pending=mig_mode_pending,
        migs=_mig_devices(handle) if mig_mode else (),
    )
    processes = _processes(handle)
    if utilization_since is None:
        return GpuReading(sample, processes, health=health)
    per_process, seen = _process_utilization(handle, utilization_since)
    return GpuReading(sample, processes, per_process, seen, health)


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _cuda_version(encoded: int | None) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    if not encoded:
        return ""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


class NvmlSession:
    """The NVML library's lifetime: lazy init with backoff, re-init after the driver goes away."""

    def __init__(self, *, min_backoff: float = 1.0, max_backoff: float = 60.0) -> None:
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._backoff = min_backoff
        self._next_attempt = 0.0
        self._initialized = False
        self._reported_failure = False
        self.driver = DriverInfo()
        self.last_error = ""
        # Increases by one per successful init: handles and event sets of an earlier
        # generation are invalid, so their holders rebuild them when it changes.
        self.generation = 0
        self._before_shutdown: list[Callable[[], None]] = []

    def on_shutdown(self, release: Callable[[], None]) -> None:
        """Call ``release`` before every nvmlShutdown (reset or close), to free what NVML
        allocated for this session (GPM sample buffers) while the library still answers."""
        self._before_shutdown.append(release)

    def _shutdown(self) -> None:
        for release in self._before_shutdown:
            try:
                release()
            except Exception:  # a release that fails must not keep the session alive
                log.exception("releasing NVML resources before shutdown failed")
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()

    @property
    def initialized(self) -> bool:
        return self._initialized

    def ensure(self) -> bool:
        """Initialise NVML if it is not and the backoff allows; tell whether it is usable."""
        if self._initialized:
            return True
        now = time.monotonic()
        if now < self._next_attempt:
            return False
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError, OSError) as error:
            self._fail(f"NVML unavailable: {error}", now)
            return False
        self._initialized = True
        self.generation += 1
        self._backoff = self._min_backoff
        self.last_error = ""
        self.driver = DriverInfo(
            driver_version=_text(pynvml.nvmlSystemGetDriverVersion) or "",
            cuda_version=_cuda_version(_field(pynvml.nvmlSystemGetCudaDriverVersion)),
            nvml_version=_text(pynvml.nvmlSystemGetNVMLVersion) or "",
        )
        log.info(
            "NVML initialised: driver %s, CUDA %s",
            self.driver.driver_version,
            self.driver.cuda_version,
        )
        self._reported_failure = False
        return True

    def _fail(self, message: str, now: float) -> None:
        self.last_error = message
        if not self._reported_failure:
            # One clear line, not one per retry; the backoff state is visible in the metrics.
            log.warning("%s; serving host facts only, retrying with backoff", message)
            self._reported_failure = True
        self._next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, self._max_backoff)

    def device_count(self) -> int:
        """Number of GPUs; a session-level error resets the session for the next attempt."""
        try:
            return int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as error:
            self.reset(f"NVML device count failed: {error}")
            raise

    def reset(self, reason: str) -> None:
        """Drop the session (driver reloaded, library gone); the next ``ensure`` re-initialises."""
        if not self._initialized:
            return
        self._initialized = False
        self._shutdown()
        self._fail(reason, time.monotonic())

    def close(self) -> None:
        if self._initialized:
            self._initialized = False
            self._shutdown()


def is_session_error(error: BaseException) -> bool:
    """True for errors after which the NVML session must be re-initialised."""
    return isinstance(error, pynvml.NVMLError) and error.value in _SESSION_ERRORS


__all__ = [
    "IDLE_PROCESS",
    "GpuReading",
    "NvmlSession",
    "ProcessUtilization",
    "RawProcess",
    "Unsupported",
    "is_session_error",
    "read_gpu",
]
