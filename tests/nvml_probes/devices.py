"""Probes of the device and system calls: fields, faults, reloading, init, processes, format."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path
from typing import Any

import pynvml as N

from simulator.fakenvml import scenario as fake
from tests.nvml_probes.common import SCENARIO, Out, code, handles, probe, raw, text, timed, value

# Each device getter with the arguments after the handle.
GETTERS: dict[str, tuple[Any, ...]] = {
    "name": (N.nvmlDeviceGetName,), "uuid": (N.nvmlDeviceGetUUID,),
    "serial": (N.nvmlDeviceGetSerial,), "pci": (N.nvmlDeviceGetPciInfo,),
    "minor": (N.nvmlDeviceGetMinorNumber,),
    "memory": (N.nvmlDeviceGetMemoryInfo,),
    "memory_v2": (N.nvmlDeviceGetMemoryInfo, N.nvmlMemory_v2),
    "rates": (N.nvmlDeviceGetUtilizationRates,),
    "temperature": (N.nvmlDeviceGetTemperature, 0),
    "temperature_v": (N.nvmlDeviceGetTemperatureV, 0),
    "power": (N.nvmlDeviceGetPowerUsage,), "limit": (N.nvmlDeviceGetEnforcedPowerLimit,),
    "management_limit": (N.nvmlDeviceGetPowerManagementLimit,),
    "energy": (N.nvmlDeviceGetTotalEnergyConsumption,), "fan": (N.nvmlDeviceGetFanSpeed,),
    "clock_sm": (N.nvmlDeviceGetClockInfo, 1), "clock_mem": (N.nvmlDeviceGetClockInfo, 2),
    "pstate": (N.nvmlDeviceGetPerformanceState,),
    "ecc_corrected": (N.nvmlDeviceGetTotalEccErrors, 0, 0),
    "ecc_uncorrected": (N.nvmlDeviceGetTotalEccErrors, 1, 0),
    "events": (N.nvmlDeviceGetCurrentClocksEventReasons,),
    "throttle": (N.nvmlDeviceGetCurrentClocksThrottleReasons,),
    "compute": (N.nvmlDeviceGetComputeRunningProcesses,),
    "graphics": (N.nvmlDeviceGetGraphicsRunningProcesses,),
}  # fmt: skip


def codes(h: Any) -> dict[str, int]:
    return {key: code(fn, h, *args) for key, (fn, *args) in GETTERS.items()}


# ---------------------------------------------------------------- fields


@probe
def every_field(out: Out) -> None:
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(1)
    pci = N.nvmlDeviceGetPciInfo(h)
    ext = N.nvmlPciInfoExt_v1_t()
    ext.version = N.nvmlPciInfoExt_v1
    N.nvmlDeviceGetPciInfoExt(h, ctypes.byref(ext))  # pynvml passes it on as given
    m1 = N.nvmlDeviceGetMemoryInfo(h)
    m2 = N.nvmlDeviceGetMemoryInfo(h, N.nvmlMemory_v2)
    rates = N.nvmlDeviceGetUtilizationRates(h)
    out.update(
        driver=N.nvmlSystemGetDriverVersion(), nvml=N.nvmlSystemGetNVMLVersion(),
        cuda=N.nvmlSystemGetCudaDriverVersion(), cuda2=N.nvmlSystemGetCudaDriverVersion_v2(),
        count=N.nvmlDeviceGetCount(), index=N.nvmlDeviceGetIndex(h),
        name=N.nvmlDeviceGetName(h), uuid=N.nvmlDeviceGetUUID(h),
        serial=N.nvmlDeviceGetSerial(h), minor=N.nvmlDeviceGetMinorNumber(h),
        pci=[text(pci.busId), text(pci.busIdLegacy), pci.domain, pci.bus, pci.device],
        pci_ext=[text(ext.busId), ext.bus, ext.baseClass],
        mem_v1=[m1.total, m1.used, m1.free],
        mem_v2=[m2.total, m2.reserved, m2.used, m2.free],
        rates=[rates.gpu, rates.memory],
        temperature=N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU),
        temperature_v=N.nvmlDeviceGetTemperatureV(h, N.NVML_TEMPERATURE_GPU),
        power=N.nvmlDeviceGetPowerUsage(h), limit=N.nvmlDeviceGetEnforcedPowerLimit(h),
        management_limit=N.nvmlDeviceGetPowerManagementLimit(h),
        energy=N.nvmlDeviceGetTotalEnergyConsumption(h),
        fan=N.nvmlDeviceGetFanSpeed(h), fan_v2=N.nvmlDeviceGetFanSpeed_v2(h, 0),
        fans=N.nvmlDeviceGetNumFans(h),
        clock_sm=N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_SM),
        clock_mem=N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_MEM),
        clock_graphics=code(N.nvmlDeviceGetClockInfo, h, N.NVML_CLOCK_GRAPHICS),
        pstate=N.nvmlDeviceGetPerformanceState(h), power_state=N.nvmlDeviceGetPowerState(h),
        ecc=[
            N.nvmlDeviceGetTotalEccErrors(h, kind, counter)
            for kind in (N.NVML_MEMORY_ERROR_TYPE_CORRECTED, N.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
            for counter in (N.NVML_VOLATILE_ECC, N.NVML_AGGREGATE_ECC)
        ],
        events=N.nvmlDeviceGetCurrentClocksEventReasons(h),
        throttle=N.nvmlDeviceGetCurrentClocksThrottleReasons(h),
        by_uuid=N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByUUID(N.nvmlDeviceGetUUID(h))),
        by_pci=N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByPciBusId(pci.busId)),
        bad_version=raw("nvmlDeviceGetMemoryInfo_v2")(h, ctypes.byref(N.c_nvmlMemory_v2_t())),
    )  # fmt: skip


@probe
def absent_fields(out: Out) -> None:
    N.nvmlInit()
    out["system"] = [
        code(N.nvmlSystemGetDriverVersion),
        code(N.nvmlSystemGetNVMLVersion),
        code(N.nvmlSystemGetCudaDriverVersion),
    ]
    out["gpus"] = [codes(h) for h in handles()]
    out["index"] = N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByIndex(1))
    out["name"] = N.nvmlDeviceGetName(N.nvmlDeviceGetHandleByIndex(1))


@probe
def first_gpu_codes(out: Out) -> None:
    N.nvmlInit()
    out["codes"] = codes(handles()[0])


@probe
def every_gpu_codes(out: Out) -> None:
    N.nvmlInit()
    out["codes"] = [codes(h) for h in handles()]


@probe
def count(out: Out) -> None:
    N.nvmlInit()
    out["count"] = N.nvmlDeviceGetCount()


# ---------------------------------------------------------------- faults


@probe
def fail_globally_and_per_gpu(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()
    out["temperature"] = [code(N.nvmlDeviceGetTemperature, h, 0) for h in (h0, h1)]
    out["power"] = [code(N.nvmlDeviceGetPowerUsage, h) for h in (h0, h1)]
    out["fan"] = [code(N.nvmlDeviceGetFanSpeed, h) for h in (h0, h1)]
    out["other"] = [code(N.nvmlDeviceGetUtilizationRates, h) for h in (h0, h1)]
    try:
        N.nvmlDeviceGetTemperature(h0, 0)
    except N.NVMLError_Unknown as error:
        out["message"] = str(error)


@probe
def lost_gpu(out: Out) -> None:
    N.nvmlInit()
    out["count"] = N.nvmlDeviceGetCount()
    out["handle"] = [code(N.nvmlDeviceGetHandleByIndex, i) for i in range(4)]
    out["by_uuid"] = code(N.nvmlDeviceGetHandleByUUID, "GPU-5f2b1c7e-0002-4000-8000-000000000002")
    h = [N.nvmlDeviceGetHandleByIndex(i) for i in (0, 1, 3)]
    out["others"] = [N.nvmlDeviceGetTemperature(x, 0) for x in h]
    out["message"] = N.nvmlErrorString(15)


@probe
def lost_after_the_handle(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()
    before = codes(h1)
    scenario = fake.FakeScenario(gpus=[fake.make_gpu(0), fake.make_gpu(1, lost=True)])
    fake.write(SCENARIO, scenario)
    out["before"] = sorted(set(before.values()))
    out["after"] = sorted(set(codes(h1).values()))
    out["gpu0"] = N.nvmlDeviceGetTemperature(h0, 0)


@probe
def block_one_call(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()

    def slow() -> None:
        out["slow"] = timed(N.nvmlDeviceGetPowerUsage, h0)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    # While that call sleeps: the same GPU's other fields, the other GPU, global calls, and a
    # change of scenario, which the sleeping call must see when it wakes.
    out["fast"] = [
        timed(N.nvmlDeviceGetTemperature, h0, 0), timed(N.nvmlDeviceGetPowerUsage, h1),
        timed(N.nvmlDeviceGetCount), timed(code, N.nvmlDeviceGetHandleByIndex, 0),
    ]  # fmt: skip
    changed = fake.FakeScenario(gpus=[fake.make_gpu(0, power_usage=555000), fake.make_gpu(1)])
    fake.write(SCENARIO, changed)
    out["fast"].append(timed(N.nvmlDeviceGetTemperature, h1, 0))
    out["overlapped"] = thread.is_alive()
    thread.join()


@probe
def global_block(out: Out) -> None:
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    thread = threading.Thread(target=lambda: out.setdefault("count", timed(N.nvmlDeviceGetCount)))
    thread.start()
    time.sleep(0.2)
    out["temperature"] = timed(N.nvmlDeviceGetTemperature, h, 0)
    thread.join()


# ---------------------------------------------------------------- reloading


@probe
def reload_after_atomic_replace(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()
    inode = SCENARIO.stat().st_ino

    def temperatures() -> list[Any]:
        return [value(N.nvmlDeviceGetTemperature, h, 0) for h in (h0, h1)]

    out["start"] = temperatures()
    fake.write(SCENARIO, fake.FakeScenario(gpus=[fake.make_gpu(0, temperature=77)]))
    out["replaced_inode"] = SCENARIO.stat().st_ino != inode
    after = temperatures()
    out["one"] = [*after, N.nvmlDeviceGetCount(), code(N.nvmlDeviceGetHandleByIndex, 1)]
    two = fake.FakeScenario(gpus=[fake.make_gpu(0), fake.make_gpu(1, temperature=80)])
    fake.write(SCENARIO, two)
    out["two"] = [*temperatures(), N.nvmlDeviceGetCount()]


def _one_gpu_text(temperature: int, gpus: int = 1) -> bytes:
    return fake.render(fake.FakeScenario(gpus=[fake.make_gpu(0, temperature=temperature)] * gpus))


@probe
def reload_after_in_place_rewrites(out: Out) -> None:
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    inode = SCENARIO.stat().st_ino
    seen = [N.nvmlDeviceGetTemperature(h, 0)]
    # Same size, same inode, rewritten faster than file timestamps tick.
    for temperature in range(11, 41):
        with open(SCENARIO, "r+b") as stream:
            stream.write(_one_gpu_text(temperature))
        seen.append(N.nvmlDeviceGetTemperature(h, 0))
    out["seen"] = seen
    with open(SCENARIO, "wb") as stream:  # truncate and rewrite with a different size
        stream.write(_one_gpu_text(15, gpus=2))
    out["resized"] = [N.nvmlDeviceGetCount(), N.nvmlDeviceGetTemperature(h, 0)]
    out["same_inode"] = SCENARIO.stat().st_ino == inode
    # A copy that keeps size and modification time (cp -p, rsync -t), seen well after the
    # last read.
    before = SCENARIO.stat()
    time.sleep(0.3)
    with open(SCENARIO, "r+b") as stream:
        stream.write(_one_gpu_text(50, gpus=2))
    os.utime(SCENARIO, ns=(before.st_atime_ns, before.st_mtime_ns))
    out["kept_mtime"] = [
        SCENARIO.stat().st_mtime_ns == before.st_mtime_ns,
        N.nvmlDeviceGetTemperature(h, 0),
    ]


@probe
def broken_file_keeps_the_last_good_state(out: Out) -> None:
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    good = SCENARIO.read_bytes()
    SCENARIO.write_bytes(good + b"bogus_key 1\n")
    out["during"] = [N.nvmlDeviceGetTemperature(h, 0) for _ in range(5)] + [N.nvmlDeviceGetCount()]
    fake.write(SCENARIO, fake.FakeScenario(gpus=[fake.make_gpu(0, temperature=42)]))
    out["after"] = N.nvmlDeviceGetTemperature(h, 0)


# ---------------------------------------------------------------- init and shutdown


@probe
def init_and_count_codes(out: Out) -> None:
    out["init"] = code(N.nvmlInit)
    out["count"] = code(N.nvmlDeviceGetCount)


@probe
def init_code(out: Out) -> None:
    out["init"] = code(N.nvmlInit)


@probe
def init_failure_then_recovery(out: Out) -> None:
    out["first"] = code(N.nvmlInit)
    out["count_before"] = code(N.nvmlDeviceGetCount)
    fake.write(SCENARIO, fake.idle(3))
    out["second"] = code(N.nvmlInit)
    out["count"] = N.nvmlDeviceGetCount()


@probe
def init_and_shutdown_counts(out: Out) -> None:
    N.nvmlInit()
    N.nvmlInitWithFlags(0)
    init_v2 = raw("nvmlInit_v2")
    out["init_v2"] = init_v2()
    out["steps"] = []
    for _ in range(3):
        out["steps"].append([code(N.nvmlShutdown), code(N.nvmlDeviceGetCount)])
    out["last"] = [code(N.nvmlShutdown), code(N.nvmlDeviceGetCount)]
    out["again"] = [code(N.nvmlInit), N.nvmlDeviceGetCount()]


@probe
def error_strings(out: Out) -> None:
    N.nvmlInit()  # pynvml loads the library here
    out["strings"] = {c: N.nvmlErrorString(c) for c in (0, 1, 3, 7, 9, 15, 999, 12345)}


# ---------------------------------------------------------------- processes


class _InfoV1(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def _listed(fn: Any, h: Any) -> list[list[int]]:
    return [[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId] for p in fn(h)]


def _probe_count(
    name: str, h: Any, size: int, buffer_type: Any = N.c_nvmlProcessInfo_v3_t
) -> list[Any]:
    count = ctypes.c_uint(size)
    infos = (buffer_type * size)() if size else None
    rc = raw(name)(h, ctypes.byref(count), infos)
    listed = (
        [[i.pid, i.usedGpuMemory] for i in infos[: count.value]]
        if rc == 0 and infos is not None
        else []
    )
    return [rc, count.value, *listed]


@probe
def process_lists(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()
    out["compute"] = _listed(N.nvmlDeviceGetComputeRunningProcesses, h0)
    out["graphics"] = _listed(N.nvmlDeviceGetGraphicsRunningProcesses, h0)
    out["compute_v2"] = _listed(N.nvmlDeviceGetComputeRunningProcesses_v2, h0)
    out["graphics_v2"] = _listed(N.nvmlDeviceGetGraphicsRunningProcesses_v2, h0)
    out["none"] = [
        N.nvmlDeviceGetComputeRunningProcesses(h1),
        N.nvmlDeviceGetGraphicsRunningProcesses(h1),
    ]
    out["probe"] = _probe_count("nvmlDeviceGetComputeRunningProcesses_v3", h0, 0)
    out["probe_graphics"] = _probe_count("nvmlDeviceGetGraphicsRunningProcesses_v3", h0, 0)
    out["probe_empty"] = _probe_count("nvmlDeviceGetComputeRunningProcesses_v3", h1, 0)
    out["too_small"] = _probe_count("nvmlDeviceGetComputeRunningProcesses_v3", h0, 1)
    out["exact"] = _probe_count("nvmlDeviceGetComputeRunningProcesses_v3", h0, 2)
    out["v1"] = _probe_count("nvmlDeviceGetComputeRunningProcesses", h0, 4, _InfoV1)


@probe
def many_processes(out: Out) -> None:
    N.nvmlInit()
    out["gpus"] = [
        [[p.pid, p.usedGpuMemory] for p in N.nvmlDeviceGetComputeRunningProcesses(h)]
        for h in handles()
    ]
    started = time.monotonic()
    for h in handles():
        N.nvmlDeviceGetComputeRunningProcesses(h)
    out["seconds"] = time.monotonic() - started


# ---------------------------------------------------------------- threads and memory


def _scenario(n: int, temperature: int) -> fake.FakeScenario:
    return fake.FakeScenario(gpus=[fake.make_gpu(i, temperature=temperature) for i in range(n)])


@probe
def concurrent_calls_while_the_file_changes(out: Out) -> None:
    N.nvmlInit()
    h0, h1 = handles()
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[Any] = []

    def reader() -> None:
        while not stop.is_set():
            for h in (h0, h1):
                got = value(N.nvmlDeviceGetTemperature, h, 0)
                if isinstance(got, dict):
                    if got["error"] != 15:
                        errors.append(got)
                else:
                    seen.add(got)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for k in range(60):
        fake.write(SCENARIO, _scenario(1 + k % 2, 50 + k % 3))
        time.sleep(0.005)
    stop.set()
    for thread in threads:
        thread.join()
    fake.write(SCENARIO, _scenario(2, 77))
    final = [N.nvmlDeviceGetTemperature(h, 0) for h in (h0, h1)]
    out.update(seen=sorted(seen), errors=errors, final=final)


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@probe
def memory_across_reloads(out: Out) -> None:
    big = [fake.render(fake.busy(64, range(1, 4097), seed=s)) for s in (1, 2)]
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)

    def reload(k: int) -> None:
        temporary = SCENARIO.with_suffix(".tmp")
        temporary.write_bytes(big[k % 2])
        os.replace(temporary, SCENARIO)
        N.nvmlDeviceGetComputeRunningProcesses(h)

    for k in range(50):
        reload(k)
    before = _rss()
    for k in range(400):
        reload(k)
    out["growth"] = _rss() - before
    out["count"] = N.nvmlDeviceGetCount()


# ---------------------------------------------------------------- file format


@probe
def bad_files(out: Out, texts: list[str]) -> None:
    out["codes"] = []
    for content in texts:
        SCENARIO.write_bytes(content.encode())
        out["codes"].append(code(N.nvmlInit))


@probe
def format_details(out: Out) -> None:
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    out.update(
        driver=N.nvmlSystemGetDriverVersion(),
        cuda=N.nvmlSystemGetCudaDriverVersion(),
        name=N.nvmlDeviceGetName(h),
        minor=N.nvmlDeviceGetMinorNumber(h),
        throttle=N.nvmlDeviceGetCurrentClocksEventReasons(h),
        graphics=[[p.pid, p.usedGpuMemory] for p in N.nvmlDeviceGetGraphicsRunningProcesses(h)],
    )


@probe
def raw_names(out: Out) -> None:
    N.nvmlInit()
    get_name = N.nvmlDeviceGetName.__wrapped__  # the bytes, before pynvml decodes them
    out["names"] = [get_name(h).hex() for h in handles()]
    out["serial"] = N.nvmlDeviceGetSerial.__wrapped__(handles()[0]).hex()


@probe
def shipped_faults(out: Out) -> None:
    N.nvmlInit()
    h0, h1, h2 = handles()
    out["cuda"] = code(N.nvmlSystemGetCudaDriverVersion)
    out["gpu0"] = [
        code(N.nvmlDeviceGetTemperature, h0, 0),
        code(N.nvmlDeviceGetTotalEnergyConsumption, h0),
        N.nvmlDeviceGetPowerUsage(h0),
    ]
    out["gpu1"] = N.nvmlDeviceGetTemperature(h1, 0)
    out["gpu2"] = [
        code(N.nvmlDeviceGetComputeRunningProcesses, h2),
        N.nvmlDeviceGetTemperature(h2, 0),
    ]
