"""Probes of per-process and video utilization, MIG devices, and faults on those entry points."""

from __future__ import annotations

import ctypes
import time
from dataclasses import replace
from typing import Any, Callable

import pynvml as N

from simulator.fakenvml import scenario as fake
from tests.nvml_probes.common import SCENARIO, Out, code, handles, probe, raw, timed, value
from tests.nvml_probes.scenarios import NEW_ENTRY_POINTS, fault_scenario, mig_scenario

# ---------------------------------------------------------------- process and video utilization


def _samples(h: Any, last_seen: int) -> Any:
    got = value(N.nvmlDeviceGetProcessUtilization, h, last_seen)
    if isinstance(got, dict):
        return got
    return [[s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil] for s in got]


def _size_query(h: Any, size: int, last_seen: int = 0) -> list[int]:
    count = ctypes.c_uint(size)
    buffer = (N.c_nvmlProcessUtilizationSample_t * size)() if size else None
    rc = raw("nvmlDeviceGetProcessUtilization")(
        h, buffer, ctypes.byref(count), ctypes.c_ulonglong(last_seen)
    )
    return [rc, count.value]


@probe
def process_utilization(out: Out) -> None:
    N.nvmlInit()
    h0, h1, h2 = handles()
    first = _samples(h0, 0)
    stamp = first[0][1]
    out.update(
        first=first, now_us=int(time.time() * 1e6),
        probe=_size_query(h0, 0), too_small=_size_query(h0, 1), exact=_size_query(h0, 2),
        older=_samples(h0, stamp - 1), seen=_samples(h0, stamp),
        probe_seen=_size_query(h0, 0, stamp),
        no_lines=[_samples(h1, 0), _size_query(h1, 0)],
        idle=[_samples(h2, 0), _size_query(h2, 0)],
        video=[value(N.nvmlDeviceGetEncoderUtilization, h0),
               value(N.nvmlDeviceGetDecoderUtilization, h0),
               value(N.nvmlDeviceGetEncoderUtilization, h1),
               value(N.nvmlDeviceGetDecoderUtilization, h1)],
    )  # fmt: skip


def _period_zero(sample: fake.FakeProcessUtilization) -> fake.FakeScenario:
    gpu = replace(fake.make_gpu(0), process_utilization=[sample], process_utilization_period=0)
    return fake.FakeScenario(gpus=[gpu])


@probe
def process_utilization_restamped(out: Out) -> None:
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    first = _samples(h, 0)[0][1]
    time.sleep(0.45)  # two periods and more
    second = _samples(h, first)
    out["periodic"] = [first, second[0][1] if isinstance(second, list) else second]
    # Period 0: stamped when the file is loaded, and only then.
    fake.write(SCENARIO, _period_zero(fake.FakeProcessUtilization(7, sm=41, memory=10)))
    reloaded = _samples(h, 0)
    time.sleep(0.3)
    out["reloaded"] = [reloaded, _samples(h, reloaded[0][1])]
    fake.write(SCENARIO, _period_zero(fake.FakeProcessUtilization(7, sm=90, memory=10)))
    out["changed"] = _samples(h, reloaded[0][1])


# ---------------------------------------------------------------- MIG


def _address(h: Any) -> int | None:
    return ctypes.cast(h, ctypes.c_void_p).value


def _mig_handles(h: Any) -> list[Any]:
    return [N.nvmlDeviceGetMigDeviceHandleByIndex(h, i) for i in range(3)]


def _is_mig(h: Any) -> Any:
    got = N.nvmlDeviceIsMigDeviceHandle(h)  # pynvml hands back the c_uint itself
    return getattr(got, "value", got)


@probe
def mig_identity(out: Out) -> None:
    N.nvmlInit()
    h0, h1, h2 = handles()
    migs = _mig_handles(h0)

    def identity(m: Any) -> list[Any]:
        v1, v2 = N.nvmlDeviceGetMemoryInfo(m), N.nvmlDeviceGetMemoryInfo(m, N.nvmlMemory_v2)
        a = N.nvmlDeviceGetAttributes_v2(m)
        return [
            _is_mig(m), _address(N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)) == _address(h0),
            N.nvmlDeviceGetGpuInstanceId(m), N.nvmlDeviceGetComputeInstanceId(m),
            N.nvmlDeviceGetUUID(m), N.nvmlDeviceGetName(m), N.nvmlDeviceGetIndex(m),
            [v1.total, v1.used, v1.free], [v2.total, v2.reserved, v2.used, v2.free],
            [a.multiprocessorCount, a.gpuInstanceSliceCount, a.computeInstanceSliceCount,
             a.memorySizeMB],
            _address(N.nvmlDeviceGetHandleByUUID(N.nvmlDeviceGetUUID(m))) == _address(m),
        ]  # fmt: skip

    out.update(
        count=N.nvmlDeviceGetCount(),
        modes=[value(N.nvmlDeviceGetMigMode, h) for h in (h0, h1, h2)],
        max=[N.nvmlDeviceGetMaxMigDeviceCount(h) for h in (h0, h1, h2)],
        by_index=[code(N.nvmlDeviceGetMigDeviceHandleByIndex, h0, i) for i in range(8)],
        others=[code(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 0) for h in (h1, h2)],
        distinct=len({_address(m) for m in migs} | {_address(h) for h in (h0, h1, h2)}),
        migs=[identity(m) for m in migs],
        gpu_handle=[_is_mig(h0), N.nvmlDeviceGetName(h0), N.nvmlDeviceGetIndex(h0)] + [
            code(fn, h0) for fn in (N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle,
                                    N.nvmlDeviceGetGpuInstanceId,
                                    N.nvmlDeviceGetComputeInstanceId,
                                    N.nvmlDeviceGetAttributes_v2)
        ],
        # What a GPU in MIG mode cannot tell, and what a MIG handle does not answer.
        parent_unsupported=[code(N.nvmlDeviceGetUtilizationRates, h0),
                            code(N.nvmlDeviceGetProcessUtilization, h0, 0),
                            code(N.nvmlDeviceGetEncoderUtilization, h0)],
        mig_unsupported=[code(N.nvmlDeviceGetUtilizationRates, migs[0]),
                         code(N.nvmlDeviceGetProcessUtilization, migs[0], 0),
                         code(N.nvmlDeviceGetTemperature, migs[0], 0),
                         code(N.nvmlDeviceGetMigMode, migs[0]),
                         code(N.nvmlDeviceGetMaxMigDeviceCount, migs[0]),
                         code(N.nvmlDeviceGetMigDeviceHandleByIndex, migs[0], 0)],
        non_mig_gpu=[_is_mig(h1), N.nvmlDeviceGetUtilizationRates(h1).gpu],
    )  # fmt: skip


def _listed(fn: Any, h: Any) -> list[list[int]]:
    return [[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId] for p in fn(h)]


def _size_probe(h: Any) -> list[int]:
    count = ctypes.c_uint(0)
    rc = raw("nvmlDeviceGetComputeRunningProcesses_v3")(h, ctypes.byref(count), None)
    return [rc, count.value]


@probe
def mig_processes(out: Out) -> None:
    N.nvmlInit()
    h0 = N.nvmlDeviceGetHandleByIndex(0)
    migs = _mig_handles(h0)
    out.update(
        parent=_listed(N.nvmlDeviceGetComputeRunningProcesses, h0),
        parent_v2=_listed(N.nvmlDeviceGetComputeRunningProcesses_v2, h0),
        parent_graphics=_listed(N.nvmlDeviceGetGraphicsRunningProcesses, h0),
        migs=[_listed(N.nvmlDeviceGetComputeRunningProcesses, m) for m in migs],
        migs_graphics=[_listed(N.nvmlDeviceGetGraphicsRunningProcesses_v2, m) for m in migs],
        probes=[_size_probe(h) for h in [h0, *migs]],
    )


@probe
def mig_handles_across_reloads(out: Out) -> None:
    N.nvmlInit()
    h0 = N.nvmlDeviceGetHandleByIndex(0)
    migs = _mig_handles(h0)

    def state() -> list[Any]:
        return [value(N.nvmlDeviceGetComputeInstanceId, m) for m in migs] + [
            value(lambda m: N.nvmlDeviceGetMemoryInfo(m).used, migs[0])
        ]

    out["start"] = state()
    base = mig_scenario()
    fewer = mig_scenario(
        migs=[replace(base.gpus[0].migs[0], memory_used=7)],
        processes=base.gpus[0].processes[:1],
    )
    fake.write(SCENARIO, fewer)
    out["fewer"] = [*state(), code(N.nvmlDeviceGetMigDeviceHandleByIndex, h0, 1)]
    fake.write(SCENARIO, mig_scenario(mig_mode=(0, 0), migs=[], processes=[]))
    out["disabled"] = [
        *state(),
        code(N.nvmlDeviceGetMigDeviceHandleByIndex, h0, 0),
        code(N.nvmlDeviceGetUtilizationRates, h0),
    ]
    fake.write(SCENARIO, base)
    out["restored"] = [
        *state(),
        _address(N.nvmlDeviceGetMigDeviceHandleByIndex(h0, 2)) == _address(migs[2]),
    ]
    fake.write(SCENARIO, mig_scenario(lost=True))
    out["lost"] = state()


def _new_entry_point_calls(g: Any, g1: Any, m: Any) -> dict[str, Callable[[], Any]]:
    """Each of NEW_ENTRY_POINTS called through pynvml on the handle it names."""
    calls: dict[str, Callable[[], Any]] = {
        "nvmlDeviceGetProcessUtilization": lambda: N.nvmlDeviceGetProcessUtilization(g1, 0),
        "nvmlDeviceGetEncoderUtilization": lambda: N.nvmlDeviceGetEncoderUtilization(g1),
        "nvmlDeviceGetDecoderUtilization": lambda: N.nvmlDeviceGetDecoderUtilization(g1),
        "nvmlDeviceGetMigMode": lambda: N.nvmlDeviceGetMigMode(g),
        "nvmlDeviceGetMaxMigDeviceCount": lambda: N.nvmlDeviceGetMaxMigDeviceCount(g),
        "nvmlDeviceGetMigDeviceHandleByIndex": lambda: N.nvmlDeviceGetMigDeviceHandleByIndex(g, 0),
        "nvmlDeviceIsMigDeviceHandle": lambda: N.nvmlDeviceIsMigDeviceHandle(m),
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": (
            lambda: N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)
        ),
        "nvmlDeviceGetGpuInstanceId": lambda: N.nvmlDeviceGetGpuInstanceId(m),
        "nvmlDeviceGetComputeInstanceId": lambda: N.nvmlDeviceGetComputeInstanceId(m),
        "nvmlDeviceGetAttributes_v2": lambda: N.nvmlDeviceGetAttributes_v2(m),
    }
    assert list(calls) == list(NEW_ENTRY_POINTS), "a call for each new entry point, in order"
    return calls


@probe
def fail_and_block_new_entry_points(out: Out) -> None:
    N.nvmlInit()
    g, g1 = handles()
    m = N.nvmlDeviceGetMigDeviceHandleByIndex(g, 0)
    calls = _new_entry_point_calls(g, g1, m)
    out["healthy"] = {name: code(call) for name, call in calls.items()}
    fake.write(SCENARIO, fault_scenario("fail"))
    out["failing"] = {name: code(call) for name, call in calls.items()}
    fake.write(SCENARIO, fault_scenario("block"))
    out["blocked"] = [
        timed(code, calls[name])
        for name in (
            "nvmlDeviceGetProcessUtilization",
            "nvmlDeviceGetGpuInstanceId",
            "nvmlDeviceGetComputeInstanceId",
        )
    ]
