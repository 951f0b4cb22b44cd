"""Probes of the GPU-health entry points: ECC, retired pages, PCIe, NVLink, fields, Xid events."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any, Callable

import pynvml as N

from simulator.fakenvml import scenario as fake
from tests.nvml_probes.common import SCENARIO, Out, code, handles, probe, raw, timed, value
from tests.nvml_probes.scenarios import DEVICE_HEALTH_ENTRY_POINTS, HEALTH_ENTRY_POINTS

XID = N.nvmlEventTypeXidCriticalError

# Each health getter with the arguments after the handle.
GETTERS: dict[str, tuple[Any, ...]] = {
    "remapped_rows": (N.nvmlDeviceGetRemappedRows,),
    "retired_sbe": (N.nvmlDeviceGetRetiredPages, 0),
    "retired_dbe_v2": (N.nvmlDeviceGetRetiredPages_v2, 1),
    "retired_pending": (N.nvmlDeviceGetRetiredPagesPendingStatus,),
    "ecc_aggregate": (N.nvmlDeviceGetTotalEccErrors, 0, N.NVML_AGGREGATE_ECC),
    "pcie_replay": (N.nvmlDeviceGetPcieReplayCounter,),
    "pcie_gen": (N.nvmlDeviceGetCurrPcieLinkGeneration,),
    "pcie_max_gen": (N.nvmlDeviceGetMaxPcieLinkGeneration,),
    "pcie_width": (N.nvmlDeviceGetCurrPcieLinkWidth,),
    "pcie_max_width": (N.nvmlDeviceGetMaxPcieLinkWidth,),
    "pcie_tx": (N.nvmlDeviceGetPcieThroughput, N.NVML_PCIE_UTIL_TX_BYTES),
    "nvlink_state": (N.nvmlDeviceGetNvLinkState, 0),
}


def _health(h: Any) -> dict[str, Any]:
    return {key: value(fn, h, *args) for key, (fn, *args) in GETTERS.items()}


@probe
def health_values(out: Out) -> None:
    N.nvmlInit()
    h0, h1, h2 = handles()
    out["gpus"] = [_health(h) for h in (h0, h1, h2)]
    out["ecc_volatile"] = [
        N.nvmlDeviceGetTotalEccErrors(h0, t, N.NVML_VOLATILE_ECC) for t in (0, 1)
    ]
    out["ecc_aggregate"] = [
        N.nvmlDeviceGetTotalEccErrors(h0, t, N.NVML_AGGREGATE_ECC) for t in (0, 1)
    ]
    out["pcie_rx"] = N.nvmlDeviceGetPcieThroughput(h0, N.NVML_PCIE_UTIL_RX_BYTES)
    out["pcie_bad_counter"] = code(N.nvmlDeviceGetPcieThroughput, h0, 2)
    out["links"] = [value(N.nvmlDeviceGetNvLinkState, h0, link) for link in range(4)]
    out["ecc_bad_type"] = code(N.nvmlDeviceGetTotalEccErrors, h0, 2, 0)


@probe
def retired_pages_size_query(out: Out) -> None:
    N.nvmlInit()
    h = handles()[0]

    def pages(
        name: str, cause: int, size: int, null_buffer: bool = False, times: bool = False
    ) -> list[Any]:
        count = ctypes.c_uint(size)
        addresses = None if null_buffer else (ctypes.c_ulonglong * max(size, 1))()
        stamps = (ctypes.c_ulonglong * max(size, 1))()
        args = [h, cause, ctypes.byref(count), addresses] + ([stamps] if times else [])
        rc = raw(name)(*args)
        got = list(addresses[: count.value]) if rc == 0 and addresses is not None else []
        stamped = [list(stamps[: count.value])] if times and rc == 0 else []
        return [rc, count.value, got, *stamped]

    out["probe"] = pages("nvmlDeviceGetRetiredPages", 0, 0, null_buffer=True)
    out["too_small"] = pages("nvmlDeviceGetRetiredPages", 0, 2)
    out["exact"] = pages("nvmlDeviceGetRetiredPages", 0, 3)
    out["larger"] = pages("nvmlDeviceGetRetiredPages", 0, 8)
    out["none_of_cause"] = pages("nvmlDeviceGetRetiredPages", 1, 0, null_buffer=True)
    out["null_buffer"] = pages("nvmlDeviceGetRetiredPages", 0, 5, null_buffer=True)
    out["bad_cause"] = pages("nvmlDeviceGetRetiredPages", 2, 8)
    out["v2_probe"] = pages("nvmlDeviceGetRetiredPages_v2", 0, 0, null_buffer=True, times=True)
    out["v2"] = pages("nvmlDeviceGetRetiredPages_v2", 0, 3, times=True)
    out["null_count"] = raw("nvmlDeviceGetRetiredPages")(h, 0, None, None)


FIELDS = [
    N.NVML_FI_DEV_NVLINK_LINK_COUNT, N.NVML_FI_DEV_PCIE_REPLAY_COUNTER,
    N.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L0, N.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L1,
    N.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_L1, N.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_L0,
    N.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
    N.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
    N.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L3, N.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L6,
    (N.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY, 1), (N.NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY, 0),
    (N.NVML_FI_DEV_NVLINK_ERROR_DL_CRC, 1), (N.NVML_FI_DEV_NVLINK_ERROR_DL_CRC, 3),
    N.NVML_FI_DEV_RETIRED_SBE, N.NVML_FI_DEV_ECC_CURRENT, 310,  # NVML_FI_MAX in nvml.h
]  # fmt: skip


def _fields(h: Any) -> list[list[Any]]:
    before = time.time()
    values = N.nvmlDeviceGetFieldValues(h, FIELDS)
    after = time.time()
    rows = []
    for v in values:
        wide = v.valueType == N.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        number = (v.value.ullVal if wide else v.value.uiVal) if v.nvmlReturn == 0 else None
        rows.append([v.fieldId, v.scopeId, v.nvmlReturn, v.valueType, number])
        assert before - 1 <= v.timestamp / 1e6 <= after + 1, v.timestamp
        assert v.latencyUsec == 0
    return rows


@probe
def field_values(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()
    out["h0"] = _fields(h0)
    out["h1"] = _fields(h1)
    empty = (N.c_nvmlFieldValue_t * 1)()
    out["null"] = raw("nvmlDeviceGetFieldValues")(h0, 1, None)
    out["zero"] = raw("nvmlDeviceGetFieldValues")(h0, 0, empty)
    out["negative"] = raw("nvmlDeviceGetFieldValues")(h0, -1, empty)


# ---------------------------------------------------------------- Xid events


def _event(data: Any) -> list[int]:
    return [
        N.nvmlDeviceGetIndex(data.device),
        data.eventType,
        data.eventData,
        data.gpuInstanceId,
        data.computeInstanceId,
    ]


def _drain(event_set: Any, timeout_ms: int = 0) -> list[Any]:
    got: list[Any] = []
    while True:
        try:
            got.append(_event(N.nvmlEventSetWait_v2(event_set, timeout_ms)))
        except N.NVMLError as error:
            got.append(error.value)
            return got


@probe
def xid_events_once(out: Out) -> None:
    N.nvmlInit()
    h0, h1, _ = handles()
    out["supported"] = N.nvmlDeviceGetSupportedEventTypes(h0)
    s = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(h0, XID | N.nvmlEventTypePState, s)
    N.nvmlDeviceRegisterEvents(h1, XID, s)
    out["first"] = _drain(s)
    gpus = [
        fake.make_gpu(0, xids=[fake.FakeXid(79), fake.FakeXid(48)]),
        fake.make_gpu(1, xids=[fake.FakeXid(13, id=5)]),
        fake.make_gpu(2, xids=[fake.FakeXid(31)]),
    ]
    # The same lines again, plus one: only the new one comes.
    gpus[0].xids.append(fake.FakeXid(48))
    fake.write(SCENARIO, fake.FakeScenario(gpus=gpus))
    out["appended"] = _drain(s)
    # A changed code at the same id is a new event; an unchanged line is not.
    gpus[1].xids = [fake.FakeXid(94, id=5)]
    fake.write(SCENARIO, fake.FakeScenario(gpus=gpus))
    out["changed"] = _drain(s)
    # A second set gets nothing already delivered.
    s2 = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(h0, XID, s2)
    out["second_set"] = _drain(s2)
    N.nvmlEventSetFree(s2)
    N.nvmlEventSetFree(s)
    out["freed_wait"] = code(N.nvmlEventSetWait_v2, s, 0)
    out["freed_register"] = code(N.nvmlDeviceRegisterEvents, h0, XID, s)
    out["double_free"] = code(N.nvmlEventSetFree, s)


@probe
def event_registration(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()
    s = N.nvmlEventSetCreate()
    out["supported"] = N.nvmlDeviceGetSupportedEventTypes(h0)
    out["unsupported"] = code(N.nvmlDeviceRegisterEvents, h0, XID | N.nvmlEventTypePState, s)
    out["outside_all"] = code(N.nvmlDeviceRegisterEvents, h0, 1 << 40, s)
    out["null_set"] = raw("nvmlDeviceRegisterEvents")(h0, ctypes.c_ulonglong(XID), None)
    out["null_data"] = raw("nvmlEventSetWait_v2")(s, None, ctypes.c_uint(0))
    out["null_create"] = raw("nvmlEventSetCreate")(None)
    out["supported_ok"] = code(N.nvmlDeviceRegisterEvents, h0, XID, s)
    lost = fake.FakeScenario(gpus=[fake.make_gpu(0), fake.make_gpu(1, lost=True)])
    fake.write(SCENARIO, lost)
    out["lost"] = code(N.nvmlDeviceRegisterEvents, h1, XID, s)
    out["lost_types"] = code(N.nvmlDeviceGetSupportedEventTypes, h1)


@probe
def xid_mid_wait(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()
    s = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(h1, XID, s)
    got: dict[str, Any] = {}

    def reader() -> None:
        # Like an exporter's event thread: 1000 ms waits in a loop.
        while "event" not in got:
            try:
                data = N.nvmlEventSetWait_v2(s, 1000)
                got["event"], got["at"] = _event(data), time.monotonic()
            except N.NVMLError_Timeout:
                got["timeouts"] = got.get("timeouts", 0) + 1

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.4)
    # Other threads' calls are not held up by the waiting one.
    out["reads"] = [timed(N.nvmlDeviceGetTemperature, h, 0) for h in (h0, h1)]
    injected = time.monotonic()
    with_xid = fake.make_gpu(1, xids=[fake.FakeXid(79)])
    fake.write(SCENARIO, fake.FakeScenario(gpus=[fake.make_gpu(0), with_xid]))
    thread.join(timeout=10)
    out["event"] = got.get("event")
    out["latency"] = got["at"] - injected if "at" in got else None
    out["after"] = _drain(s, 50)


@probe
def wait_times_out(out: Out) -> None:
    N.nvmlInit()
    s = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(handles()[0], XID, s)
    out["short"] = timed(code, N.nvmlEventSetWait_v2, s, 300)
    out["zero"] = timed(code, N.nvmlEventSetWait_v2, s, 0)
    out["unversioned"] = raw("nvmlEventSetWait")(s, ctypes.byref(N.c_nvmlEventData_t()), 0)
    N.nvmlShutdown()
    out["after_shutdown"] = code(N.nvmlEventSetWait_v2, s, 0)


@probe
def lost_gpu_xids(out: Out) -> None:
    N.nvmlInit()
    _, h1 = handles()
    s = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(h1, XID, s)
    gpus = [fake.make_gpu(0), fake.make_gpu(1, lost=True, xids=[fake.FakeXid(79)])]
    fake.write(SCENARIO, fake.FakeScenario(gpus=gpus))
    data = N.nvmlEventSetWait_v2(s, 1000)
    out["event"] = [data.eventData, code(N.nvmlDeviceGetIndex, data.device)]
    out["then"] = _drain(s)
    out["health"] = [
        code(N.nvmlDeviceGetPcieReplayCounter, h1),
        code(N.nvmlDeviceGetFieldValues, h1, [91]),
    ]


# ---------------------------------------------------------------- faults on every entry point


def _call(name: str, h: Any, s: Any) -> int:
    """Call the health entry point ``name`` through pynvml (or its raw symbol); its code."""
    calls: dict[str, Callable[[], Any]] = {
        "nvmlEventSetCreate": lambda: N.nvmlEventSetCreate(),
        "nvmlEventSetFree": lambda: N.nvmlEventSetFree(N.nvmlEventSetCreate()),
        "nvmlDeviceGetSupportedEventTypes": lambda: N.nvmlDeviceGetSupportedEventTypes(h),
        "nvmlDeviceRegisterEvents": lambda: N.nvmlDeviceRegisterEvents(h, 8, s),
        "nvmlEventSetWait_v2": lambda: N.nvmlEventSetWait_v2(s, 0),
        "nvmlEventSetWait": lambda: N._nvmlCheckReturn(
            raw("nvmlEventSetWait")(s, ctypes.byref(N.c_nvmlEventData_t()), 0)
        ),
        "nvmlDeviceGetRemappedRows": lambda: N.nvmlDeviceGetRemappedRows(h),
        "nvmlDeviceGetRetiredPages": lambda: N.nvmlDeviceGetRetiredPages(h, 0),
        "nvmlDeviceGetRetiredPages_v2": lambda: N.nvmlDeviceGetRetiredPages_v2(h, 0),
        "nvmlDeviceGetRetiredPagesPendingStatus": (
            lambda: N.nvmlDeviceGetRetiredPagesPendingStatus(h)
        ),
        "nvmlDeviceGetTotalEccErrors": lambda: N.nvmlDeviceGetTotalEccErrors(h, 0, 1),
        "nvmlDeviceGetPcieReplayCounter": lambda: N.nvmlDeviceGetPcieReplayCounter(h),
        "nvmlDeviceGetCurrPcieLinkGeneration": lambda: N.nvmlDeviceGetCurrPcieLinkGeneration(h),
        "nvmlDeviceGetMaxPcieLinkGeneration": lambda: N.nvmlDeviceGetMaxPcieLinkGeneration(h),
        "nvmlDeviceGetCurrPcieLinkWidth": lambda: N.nvmlDeviceGetCurrPcieLinkWidth(h),
        "nvmlDeviceGetMaxPcieLinkWidth": lambda: N.nvmlDeviceGetMaxPcieLinkWidth(h),
        "nvmlDeviceGetPcieThroughput": lambda: N.nvmlDeviceGetPcieThroughput(h, 0),
        "nvmlDeviceGetNvLinkState": lambda: N.nvmlDeviceGetNvLinkState(h, 0),
        "nvmlDeviceGetFieldValues": lambda: N.nvmlDeviceGetFieldValues(h, [91]),
    }
    return code(calls[name])


@probe
def fail_and_block_health_entry_points(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()
    s = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(h0, 8, s)
    out["clean"] = {name: _call(name, h0, s) for name in HEALTH_ENTRY_POINTS}
    start = SCENARIO.read_bytes()

    def with_lines(lines: list[str], *, per_gpu: bool = False) -> None:
        # Global lines go before the first [gpu], per-GPU ones right after it (GPU 0).
        text = "".join(line + "\n" for line in lines).encode()
        new = b"[gpu]\n" + text if per_gpu else text + b"[gpu]"
        SCENARIO.write_bytes(start.replace(b"[gpu]", new, 1))

    with_lines([f"fail {n} 17" for n in HEALTH_ENTRY_POINTS])
    out["global"] = {name: _call(name, h0, s) for name in HEALTH_ENTRY_POINTS}
    with_lines([f"fail {n} 999" for n in DEVICE_HEALTH_ENTRY_POINTS], per_gpu=True)
    out["per_gpu"] = {
        name: [_call(name, h0, s), _call(name, h1, s)] for name in DEVICE_HEALTH_ENTRY_POINTS
    }
    with_lines(["block nvmlEventSetWait_v2 0.5", "block nvmlDeviceGetNvLinkState 0.5"])
    blocked = ("nvmlEventSetWait_v2", "nvmlDeviceGetNvLinkState")
    out["blocked"] = [timed(_call, name, h0, s) for name in blocked]
    out["unblocked"] = timed(_call, "nvmlDeviceGetPcieReplayCounter", h0, s)
