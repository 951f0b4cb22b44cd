"""The fake NVML library through pynvml's real ctypes calls, and the scenario builder.

pynvml keeps the library it loaded for the life of a process, so every check runs a short
Python program in a child process with ``LD_LIBRARY_PATH`` on the fake library and prints
its findings as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from simulator.fakenvml import scenario as fake
from simulator.fakenvml.build import LIBRARY, build

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "tests" / "scenarios"

SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
INSUFFICIENT_SIZE = 7
DRIVER_NOT_LOADED = 9
TIMEOUT = 10
GPU_IS_LOST = 15
ARGUMENT_VERSION_MISMATCH = 25
UNKNOWN = 999

PRELUDE = r'''
import ctypes, json, os, sys, threading, time
from dataclasses import replace
from pathlib import Path
import pynvml as N
from simulator.fakenvml import scenario as fake

out = {}
SCENARIO = Path(os.environ.get("FAKE_NVML_SCENARIO", "/nonexistent"))

def code(fn, *args):
    """0, or the nvmlReturn_t of the NVMLError a pynvml call raised."""
    try:
        fn(*args)
        return 0
    except N.NVMLError as error:
        return error.value

def value(fn, *args):
    try:
        return fn(*args)
    except N.NVMLError as error:
        return {"error": error.value}

def timed(fn, *args):
    started = time.monotonic()
    result = value(fn, *args)
    return result, time.monotonic() - started

def text(field):
    """pynvml hands char arrays back as str or bytes depending on the structure."""
    return field.decode() if isinstance(field, bytes) else field

def raw(name):
    """The library's own entry point, for calls pynvml does not make the way a test needs."""
    return N._nvmlGetFunctionPointer(name)

def handles():
    return [N.nvmlDeviceGetHandleByIndex(i) for i in range(N.nvmlDeviceGetCount())]
'''


@dataclass
class Probe:
    out: dict[str, Any]
    stderr: str


def run_probe(
    library: Path,
    code: str,
    *,
    scenario: Path | None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Probe:
    """Run ``code`` after PRELUDE in a fresh interpreter on the fake library."""
    environment = {k: v for k, v in os.environ.items() if k != "FAKE_NVML_SCENARIO"}
    environment["LD_LIBRARY_PATH"] = str(library)
    if scenario is not None:
        environment["FAKE_NVML_SCENARIO"] = str(scenario)
    environment.update(env or {})
    program = PRELUDE + code + '\nprint("RESULT " + json.dumps(out))\n'
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, (
        f"probe failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return Probe(json.loads(lines[-1][len("RESULT ") :]), result.stderr)


@pytest.fixture
def probe(fake_nvml: Path, tmp_path: Path):
    """``probe(code, scenario)``: write the scenario (object, text or bytes), then run code."""
    path = tmp_path / "scenario.scn"

    def run(
        code: str,
        scenario: fake.FakeScenario | str | bytes | None = None,
        **options: Any,
    ) -> Probe:
        if isinstance(scenario, fake.FakeScenario):
            fake.write(path, scenario)
        elif scenario is not None:
            path.write_bytes(scenario.encode() if isinstance(scenario, str) else scenario)
        return run_probe(fake_nvml, code, scenario=path, **options)

    return run


# ---------------------------------------------------------------- building


def test_build_writes_the_library_and_skips_an_up_to_date_rebuild(tmp_path):
    library = build(tmp_path / "out")
    assert library == tmp_path / "out" / LIBRARY
    assert os.readlink(tmp_path / "out" / "libnvidia-ml.so") == LIBRARY
    first = library.stat().st_mtime_ns
    assert build(tmp_path / "out").stat().st_mtime_ns == first
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    for name in ("nvmlInitWithFlags", "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetCount_v2"):
        assert f" T {name}\n" in symbols


def _build_cli(tmp_path: Path, *python_flags: str, env: dict[str, str] | None = None):
    command = [sys.executable, *python_flags, "-m", "simulator.fakenvml.build"]
    return subprocess.run(
        [*command, "--force", "--out", str(tmp_path / "out")],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_build_without_gcc_says_so(tmp_path):
    result = _build_cli(tmp_path, env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "gcc not found" in result.stderr
    assert not (tmp_path / "out" / LIBRARY).exists()


def test_build_without_the_header_package_says_so(tmp_path):
    result = _build_cli(tmp_path, "-S")  # no site-packages: the nvidia package is not found
    assert result.returncode == 1
    assert "nvml.h not found" in result.stderr and "nvidia-nvml-dev" in result.stderr


# ---------------------------------------------------------------- fields


def test_every_field_through_pynvml(probe):
    gpu = fake.make_gpu(
        1,
        throttle_reasons=0x44,
        ecc_corrected=7,
        ecc_uncorrected=2,
        pstate=2,
        processes=[fake.FakeProcess(4242, 3 * fake.GIB)],
    )
    scenario = fake.FakeScenario(gpus=[fake.make_gpu(0), gpu])
    result = probe(
        """
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(1)
pci = N.nvmlDeviceGetPciInfo(h)
ext = N.nvmlPciInfoExt_v1_t(); ext.version = N.nvmlPciInfoExt_v1
N.nvmlDeviceGetPciInfoExt(h, ctypes.byref(ext))  # pynvml passes it on as given
m1 = N.nvmlDeviceGetMemoryInfo(h)
m2 = N.nvmlDeviceGetMemoryInfo(h, N.nvmlMemory_v2)
rates = N.nvmlDeviceGetUtilizationRates(h)
out.update(
    driver=N.nvmlSystemGetDriverVersion(), nvml=N.nvmlSystemGetNVMLVersion(),
    cuda=N.nvmlSystemGetCudaDriverVersion(), cuda2=N.nvmlSystemGetCudaDriverVersion_v2(),
    count=N.nvmlDeviceGetCount(), index=N.nvmlDeviceGetIndex(h),
    name=N.nvmlDeviceGetName(h), uuid=N.nvmlDeviceGetUUID(h), serial=N.nvmlDeviceGetSerial(h),
    minor=N.nvmlDeviceGetMinorNumber(h),
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
)
""",
        scenario,
    )
    out = result.out
    assert out["driver"] == scenario.driver_version and out["nvml"] == scenario.nvml_version
    assert out["cuda"] == out["cuda2"] == 12040
    assert (out["count"], out["index"], out["minor"]) == (2, 1, 1)
    assert (out["name"], out["uuid"], out["serial"]) == (gpu.name, gpu.uuid, gpu.serial)
    assert out["pci"] == ["00000000:19:00.0", "0000:19:00.0", 0, 0x19, 0]
    assert out["pci_ext"] == ["00000000:19:00.0", 0x19, 3]
    reserved = gpu.memory_reserved
    assert out["mem_v2"] == [gpu.memory_total, reserved, gpu.memory_used, gpu.memory_free]
    assert gpu.memory_free == gpu.memory_total - gpu.memory_used - reserved
    # v1 has no reserved field: like the real library, it counts reserved memory as used.
    assert out["mem_v1"] == [gpu.memory_total, gpu.memory_used + reserved, gpu.memory_free]
    assert out["rates"] == [gpu.utilization_gpu, gpu.utilization_memory]
    assert out["temperature"] == out["temperature_v"] == gpu.temperature
    assert (out["power"], out["limit"]) == (gpu.power_usage, gpu.power_limit)
    assert out["management_limit"] == gpu.power_limit
    assert out["energy"] == gpu.energy
    assert out["fan"] == out["fan_v2"] == gpu.fan_speed and out["fans"] == 1
    assert (out["clock_sm"], out["clock_mem"]) == (gpu.clock_sm, gpu.clock_mem)
    assert out["clock_graphics"] == NOT_SUPPORTED
    assert out["pstate"] == out["power_state"] == 2
    assert out["ecc"] == [7, 7, 2, 2]
    assert out["events"] == out["throttle"] == 0x44
    assert out["by_uuid"] == out["by_pci"] == 1
    assert out["bad_version"] == ARGUMENT_VERSION_MISMATCH
    assert result.stderr == ""


DEVICE_GETTERS = """
GETTERS = {
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
}
def codes(h):
    return {key: code(fn, h, *args) for key, (fn, *args) in GETTERS.items()}
"""


def test_absent_fields_answer_not_supported(probe):
    text = "[gpu]\n[gpu]\nname only a name\n"  # two GPUs: nothing at all, then just a name
    result = probe(
        DEVICE_GETTERS
        + """
N.nvmlInit()
out["system"] = [code(N.nvmlSystemGetDriverVersion), code(N.nvmlSystemGetNVMLVersion),
                 code(N.nvmlSystemGetCudaDriverVersion)]
out["gpus"] = [codes(h) for h in handles()]
out["index"] = N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByIndex(1))
out["name"] = N.nvmlDeviceGetName(N.nvmlDeviceGetHandleByIndex(1))
""",
        text,
    )
    assert result.out["system"] == [NOT_SUPPORTED] * 3
    empty, named = result.out["gpus"]
    listing = {"compute": SUCCESS, "graphics": SUCCESS}  # no processes is an empty list
    assert empty == {**{key: NOT_SUPPORTED for key in empty}, **listing}
    assert named == {**empty, "name": SUCCESS}
    assert (result.out["index"], result.out["name"]) == (1, "only a name")


def test_builder_none_fields_are_absent(probe):
    gpu = fake.make_gpu(0, ecc_corrected=None, fan_speed=None, serial=None, power_limit=None)
    result = probe(
        DEVICE_GETTERS + "N.nvmlInit()\nout['codes'] = codes(handles()[0])\n",
        fake.FakeScenario(gpus=[gpu]),
    )
    unsupported = {key for key, value in result.out["codes"].items() if value != SUCCESS}
    assert unsupported == {"ecc_corrected", "fan", "serial", "limit", "management_limit"}
    assert b"fan_speed" not in fake.render(fake.FakeScenario(gpus=[gpu]))


# ---------------------------------------------------------------- faults


def test_fail_globally_and_per_gpu(probe):
    gpus = [fake.make_gpu(i) for i in range(2)]
    gpus[0].fail = {"nvmlDeviceGetTemperature": UNKNOWN, "nvmlDeviceGetPowerUsage": NO_PERMISSION}
    scenario = fake.FakeScenario(gpus=gpus, fail={"nvmlDeviceGetFanSpeed": 17})
    result = probe(
        """
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
""",
        scenario,
    )
    assert result.out["temperature"] == [UNKNOWN, SUCCESS]
    assert result.out["power"] == [NO_PERMISSION, SUCCESS]
    assert result.out["fan"] == [17, 17]
    assert result.out["other"] == [SUCCESS, SUCCESS]
    assert result.out["message"] == "Unknown Error"


def test_lost_gpu_answers_gpu_is_lost_to_every_call(probe):
    result = probe(
        DEVICE_GETTERS
        + """
N.nvmlInit()
out["count"] = N.nvmlDeviceGetCount()
out["handle"] = [code(N.nvmlDeviceGetHandleByIndex, i) for i in range(4)]
out["by_uuid"] = code(N.nvmlDeviceGetHandleByUUID, "GPU-5f2b1c7e-0002-4000-8000-000000000002")
h = [N.nvmlDeviceGetHandleByIndex(i) for i in (0, 1, 3)]
out["others"] = [N.nvmlDeviceGetTemperature(x, 0) for x in h]
out["message"] = N.nvmlErrorString(15)
""",
        (SHIPPED / "lost-gpu.scn").read_bytes(),
    )
    assert result.out["count"] == 4
    assert result.out["handle"] == [SUCCESS, SUCCESS, GPU_IS_LOST, SUCCESS]
    assert result.out["by_uuid"] == GPU_IS_LOST
    assert result.out["others"] == [33, 34, 36]
    assert result.out["message"] == "GPU is lost"


def test_lost_applies_to_a_handle_taken_before(probe):
    gpus = [fake.make_gpu(i) for i in range(2)]
    result = probe(
        DEVICE_GETTERS
        + """
N.nvmlInit()
h0, h1 = handles()
before = codes(h1)
scenario = fake.FakeScenario(gpus=[fake.make_gpu(0), fake.make_gpu(1, lost=True)])
fake.write(SCENARIO, scenario)
out["before"] = sorted(set(before.values()))
out["after"] = sorted(set(codes(h1).values()))
out["gpu0"] = N.nvmlDeviceGetTemperature(h0, 0)
""",
        fake.FakeScenario(gpus=gpus),
    )
    assert result.out["before"] == [SUCCESS]
    assert result.out["after"] == [GPU_IS_LOST]
    assert result.out["gpu0"] == gpus[0].temperature


def test_block_delays_that_call_only(probe):
    gpus = [fake.make_gpu(i) for i in range(2)]
    gpus[0].block = {"nvmlDeviceGetPowerUsage": 1.0}
    result = probe(
        """
N.nvmlInit()
h0, h1 = handles()
def slow():
    out["slow"] = timed(N.nvmlDeviceGetPowerUsage, h0)
thread = threading.Thread(target=slow)
thread.start()
time.sleep(0.2)
# While that call sleeps: the same GPU's other fields, the other GPU, global calls, and a
# change of scenario, which the sleeping call must see when it wakes.
out["fast"] = [
    timed(N.nvmlDeviceGetTemperature, h0, 0), timed(N.nvmlDeviceGetPowerUsage, h1),
    timed(N.nvmlDeviceGetCount), timed(code, N.nvmlDeviceGetHandleByIndex, 0),
]
changed = fake.FakeScenario(gpus=[fake.make_gpu(0, power_usage=555000), fake.make_gpu(1)])
fake.write(SCENARIO, changed)
out["fast"].append(timed(N.nvmlDeviceGetTemperature, h1, 0))
out["overlapped"] = thread.is_alive()
thread.join()
""",
        fake.FakeScenario(gpus=gpus),
    )
    power, elapsed = result.out["slow"]
    assert 1.0 <= elapsed < 3.0
    assert power == 555_000  # read after the wait, from the file as it was then
    assert result.out["overlapped"]
    assert all(seconds < 0.5 for _, seconds in result.out["fast"]), result.out["fast"]


def test_global_block_delays_every_caller_of_that_entry_point(probe):
    scenario = fake.idle(2)
    scenario.block = {"nvmlDeviceGetCount_v2": 1.0}
    result = probe(
        """
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
thread = threading.Thread(target=lambda: out.setdefault("count", timed(N.nvmlDeviceGetCount)))
thread.start()
time.sleep(0.2)
out["temperature"] = timed(N.nvmlDeviceGetTemperature, h, 0)
thread.join()
""",
        scenario,
    )
    count, elapsed = result.out["count"]
    assert count == 2 and 1.0 <= elapsed < 3.0
    temperature, elapsed = result.out["temperature"]
    assert temperature == scenario.gpus[0].temperature and elapsed < 0.5


# ---------------------------------------------------------------- reloading


def test_reload_after_atomic_replace_keeps_handles_valid(probe):
    two = fake.FakeScenario(gpus=[fake.make_gpu(0, temperature=50), fake.make_gpu(1)])
    result = probe(
        """
N.nvmlInit()
h0, h1 = handles()
inode = SCENARIO.stat().st_ino
def temperatures():
    return [value(N.nvmlDeviceGetTemperature, h, 0) for h in (h0, h1)]
out["start"] = temperatures()
fake.write(SCENARIO, fake.FakeScenario(gpus=[fake.make_gpu(0, temperature=77)]))
out["replaced_inode"] = SCENARIO.stat().st_ino != inode
out["one"] = temperatures() + [N.nvmlDeviceGetCount(), code(N.nvmlDeviceGetHandleByIndex, 1)]
fake.write(SCENARIO, fake.FakeScenario(gpus=[fake.make_gpu(0), fake.make_gpu(1, temperature=80)]))
out["two"] = temperatures() + [N.nvmlDeviceGetCount()]
""",
        two,
    )
    assert result.out["start"] == [50, two.gpus[1].temperature]
    assert result.out["replaced_inode"]
    assert result.out["one"] == [77, {"error": GPU_IS_LOST}, 1, INVALID_ARGUMENT]
    assert result.out["two"] == [fake.make_gpu(0).temperature, 80, 2]


def test_reload_after_in_place_rewrites(probe):
    def text(temperature: int) -> bytes:
        return fake.render(fake.FakeScenario(gpus=[fake.make_gpu(0, temperature=temperature)]))

    assert len(text(10)) == len(text(99))
    result = probe(
        """
def text(temperature, gpus=1):
    return fake.render(fake.FakeScenario(gpus=[fake.make_gpu(0, temperature=temperature)] * gpus))
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
inode = SCENARIO.stat().st_ino
seen = [N.nvmlDeviceGetTemperature(h, 0)]
# Same size, same inode, rewritten faster than file timestamps tick.
for temperature in range(11, 41):
    with open(SCENARIO, "r+b") as stream:
        stream.write(text(temperature))
    seen.append(N.nvmlDeviceGetTemperature(h, 0))
out["seen"] = seen
with open(SCENARIO, "wb") as stream:  # truncate and rewrite with a different size
    stream.write(text(15, gpus=2))
out["resized"] = [N.nvmlDeviceGetCount(), N.nvmlDeviceGetTemperature(h, 0)]
out["same_inode"] = SCENARIO.stat().st_ino == inode
# A copy that keeps size and modification time (cp -p, rsync -t), seen well after the last read.
before = SCENARIO.stat()
time.sleep(0.3)
with open(SCENARIO, "r+b") as stream:
    stream.write(text(50, gpus=2))
os.utime(SCENARIO, ns=(before.st_atime_ns, before.st_mtime_ns))
out["kept_mtime"] = [
    SCENARIO.stat().st_mtime_ns == before.st_mtime_ns, N.nvmlDeviceGetTemperature(h, 0)
]
""",
        text(10),
    )
    assert result.out["seen"] == list(range(10, 41))
    assert result.out["resized"] == [2, 15]
    assert result.out["same_inode"]
    assert result.out["kept_mtime"] == [True, 50]


def test_a_broken_file_keeps_the_last_good_state_and_logs_once(probe, tmp_path):
    result = probe(
        """
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
good = SCENARIO.read_bytes()
SCENARIO.write_bytes(good + b"bogus_key 1\\n")
out["during"] = [N.nvmlDeviceGetTemperature(h, 0) for _ in range(5)] + [N.nvmlDeviceGetCount()]
fake.write(SCENARIO, fake.FakeScenario(gpus=[fake.make_gpu(0, temperature=42)]))
out["after"] = N.nvmlDeviceGetTemperature(h, 0)
""",
        fake.idle(1),
    )
    lines_in_file = len(fake.render(fake.idle(1)).splitlines())
    temperature = fake.idle(1).gpus[0].temperature
    assert result.out["during"] == [temperature] * 5 + [1]
    assert result.out["after"] == 42
    logged = result.stderr.strip().splitlines()
    assert logged == [
        f"fake-nvml: {tmp_path / 'scenario.scn'}:{lines_in_file + 1}: unknown key 'bogus_key' "
        "in a [gpu] section; keeping the last good scenario"
    ]


# ---------------------------------------------------------------- init and shutdown


def test_init_without_a_scenario_is_driver_not_loaded(fake_nvml, tmp_path):
    code = "out['init'] = code(N.nvmlInit)\nout['count'] = code(N.nvmlDeviceGetCount)\n"
    unset = run_probe(fake_nvml, code, scenario=None)
    assert unset.out == {"init": DRIVER_NOT_LOADED, "count": UNINITIALIZED}
    assert "FAKE_NVML_SCENARIO is not set" in unset.stderr
    missing = run_probe(fake_nvml, code, scenario=tmp_path / "nothing-here.scn")
    assert missing.out == {"init": DRIVER_NOT_LOADED, "count": UNINITIALIZED}
    assert "nothing-here.scn" in missing.stderr and "No such file" in missing.stderr


def test_init_on_a_broken_file_is_unknown_and_names_the_line(probe, tmp_path):
    result = probe(
        "out['init'] = code(N.nvmlInit)\n", "driver_version 1\n\n[gpu]\ntemperature hot\n"
    )
    assert result.out["init"] == UNKNOWN
    assert f"{tmp_path / 'scenario.scn'}:4: temperature needs an integer" in result.stderr


def test_injected_init_failure_then_recovery(probe):
    broken = replace(fake.idle(1), fail={"nvmlInitWithFlags": DRIVER_NOT_LOADED})
    result = probe(
        """
out["first"] = code(N.nvmlInit)
out["count_before"] = code(N.nvmlDeviceGetCount)
fake.write(SCENARIO, fake.idle(3))
out["second"] = code(N.nvmlInit)
out["count"] = N.nvmlDeviceGetCount()
""",
        broken,
    )
    assert result.out == {
        "first": DRIVER_NOT_LOADED,
        "count_before": UNINITIALIZED,
        "second": SUCCESS,
        "count": 3,
    }


def test_init_and_shutdown_are_reference_counted(probe):
    result = probe(
        """
N.nvmlInit()
N.nvmlInitWithFlags(0)
init_v2 = raw("nvmlInit_v2")
out["init_v2"] = init_v2()
out["steps"] = []
for _ in range(3):
    out["steps"].append([code(N.nvmlShutdown), code(N.nvmlDeviceGetCount)])
out["last"] = [code(N.nvmlShutdown), code(N.nvmlDeviceGetCount)]
out["again"] = [code(N.nvmlInit), N.nvmlDeviceGetCount()]
""",
        fake.idle(2),
    )
    assert result.out["init_v2"] == SUCCESS
    assert result.out["steps"] == [[SUCCESS, SUCCESS], [SUCCESS, SUCCESS], [SUCCESS, UNINITIALIZED]]
    assert result.out["last"] == [UNINITIALIZED, UNINITIALIZED]
    assert result.out["again"] == [SUCCESS, 2]


def test_error_strings_read_like_the_real_library(probe):
    result = probe(
        "N.nvmlInit()  # pynvml loads the library here\n"
        "out['strings'] = {c: N.nvmlErrorString(c) for c in (0, 1, 3, 7, 9, 15, 999, 12345)}\n",
        fake.idle(1),
    )
    assert result.out["strings"] == {
        "0": "Success",
        "1": "Uninitialized",
        "3": "Not Supported",
        "7": "Insufficient Size",
        "9": "Driver Not Loaded",
        "15": "GPU is lost",
        "999": "Unknown Error",
        "12345": "Unknown Error",
    }


# ---------------------------------------------------------------- processes


def test_process_lists(probe):
    gpu = fake.make_gpu(
        0,
        processes=[
            fake.FakeProcess(101, 1 * fake.GIB),
            fake.FakeProcess(102, 2 * fake.GIB, kind="graphics"),
            fake.FakeProcess(103, 3 * fake.GIB),
        ],
    )
    result = probe(
        """
N.nvmlInit()
h0, h1 = handles()
def listed(fn, h):
    return [[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId] for p in fn(h)]
out["compute"] = listed(N.nvmlDeviceGetComputeRunningProcesses, h0)
out["graphics"] = listed(N.nvmlDeviceGetGraphicsRunningProcesses, h0)
out["compute_v2"] = listed(N.nvmlDeviceGetComputeRunningProcesses_v2, h0)
out["graphics_v2"] = listed(N.nvmlDeviceGetGraphicsRunningProcesses_v2, h0)
out["none"] = [
    N.nvmlDeviceGetComputeRunningProcesses(h1), N.nvmlDeviceGetGraphicsRunningProcesses(h1)
]

class InfoV1(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]
def probe_count(name, h, size, buffer_type=N.c_nvmlProcessInfo_v3_t):
    count = ctypes.c_uint(size)
    infos = (buffer_type * size)() if size else None
    rc = raw(name)(h, ctypes.byref(count), infos)
    listed = [[i.pid, i.usedGpuMemory] for i in infos[: count.value]] if rc == 0 and size else []
    return [rc, count.value, *listed]
out["probe"] = probe_count("nvmlDeviceGetComputeRunningProcesses_v3", h0, 0)
out["probe_graphics"] = probe_count("nvmlDeviceGetGraphicsRunningProcesses_v3", h0, 0)
out["probe_empty"] = probe_count("nvmlDeviceGetComputeRunningProcesses_v3", h1, 0)
out["too_small"] = probe_count("nvmlDeviceGetComputeRunningProcesses_v3", h0, 1)
out["exact"] = probe_count("nvmlDeviceGetComputeRunningProcesses_v3", h0, 2)
out["v1"] = probe_count("nvmlDeviceGetComputeRunningProcesses", h0, 4, InfoV1)
""",
        fake.FakeScenario(gpus=[gpu, fake.make_gpu(1)]),
    )
    no_instance = 0xFFFFFFFF
    compute = [[101, fake.GIB, no_instance, no_instance], [103, 3 * fake.GIB] + [no_instance] * 2]
    graphics = [[102, 2 * fake.GIB, no_instance, no_instance]]
    assert result.out["compute"] == result.out["compute_v2"] == compute
    assert result.out["graphics"] == result.out["graphics_v2"] == graphics
    assert result.out["none"] == [[], []]
    assert result.out["probe"] == [INSUFFICIENT_SIZE, 2]
    assert result.out["probe_graphics"] == [INSUFFICIENT_SIZE, 1]
    assert result.out["probe_empty"] == [SUCCESS, 0]
    assert result.out["too_small"] == [INSUFFICIENT_SIZE, 2]
    assert result.out["exact"] == [SUCCESS, 2, [101, fake.GIB], [103, 3 * fake.GIB]]
    assert result.out["v1"] == [SUCCESS, 2, [101, fake.GIB], [103, 3 * fake.GIB]]


def test_sixteen_gpus_with_512_processes(probe):
    pids = list(range(200_000, 200_512))
    scenario = fake.busy(16, pids, seed=3)
    result = probe(
        """
N.nvmlInit()
out["gpus"] = [
    [[p.pid, p.usedGpuMemory] for p in N.nvmlDeviceGetComputeRunningProcesses(h)]
    for h in handles()
]
started = time.monotonic()
for h in handles():
    N.nvmlDeviceGetComputeRunningProcesses(h)
out["seconds"] = time.monotonic() - started
""",
        scenario,
    )
    expected = [[[p.pid, p.used_bytes] for p in gpu.processes] for gpu in scenario.gpus]
    assert result.out["gpus"] == expected
    assert sorted(pid for gpu in result.out["gpus"] for pid, _ in gpu) == pids
    assert all(len(gpu) == 32 for gpu in result.out["gpus"])
    assert result.out["seconds"] < 1.0


# ---------------------------------------------------------------- process and video utilization

NOT_FOUND = 6
HOUR_US = 3600 * 1_000_000

UTILIZATION_PRELUDE = """
def samples(h, last_seen):
    got = value(N.nvmlDeviceGetProcessUtilization, h, last_seen)
    if isinstance(got, dict):
        return got
    return [[s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil] for s in got]

def size_query(h, size, last_seen=0):
    count = ctypes.c_uint(size)
    buffer = (N.c_nvmlProcessUtilizationSample_t * size)() if size else None
    rc = raw("nvmlDeviceGetProcessUtilization")(h, buffer, ctypes.byref(count),
                                                ctypes.c_ulonglong(last_seen))
    return [rc, count.value]
"""


def test_process_utilization_size_query_filtering_and_support(probe):
    sampled = fake.make_gpu(
        0,
        process_utilization=[
            fake.FakeProcessUtilization(101, sm=55, memory=21, encoder=3, decoder=4),
            fake.FakeProcessUtilization(102, sm=7, memory=1),
        ],
        process_utilization_period=HOUR_US,  # no new stamp during the test
        encoder_utilization=12,
        decoder_utilization=9,
    )
    no_lines = fake.make_gpu(1)
    idle_but_supported = fake.make_gpu(2, process_utilization_period=HOUR_US)
    started_us = int(time.time() * 1e6)
    result = probe(
        UTILIZATION_PRELUDE
        + """
N.nvmlInit()
h0, h1, h2 = handles()
first = samples(h0, 0)
stamp = first[0][1]
out.update(
    first=first, now_us=int(time.time() * 1e6),
    probe=size_query(h0, 0), too_small=size_query(h0, 1), exact=size_query(h0, 2),
    older=samples(h0, stamp - 1), seen=samples(h0, stamp), probe_seen=size_query(h0, 0, stamp),
    no_lines=[samples(h1, 0), size_query(h1, 0)], idle=[samples(h2, 0), size_query(h2, 0)],
    video=[value(N.nvmlDeviceGetEncoderUtilization, h0),
           value(N.nvmlDeviceGetDecoderUtilization, h0),
           value(N.nvmlDeviceGetEncoderUtilization, h1),
           value(N.nvmlDeviceGetDecoderUtilization, h1)],
)
""",
        fake.FakeScenario(gpus=[sampled, no_lines, idle_but_supported]),
    )
    out = result.out
    stamp = out["first"][0][1]
    # Stamped in microseconds of CPU time when the file was loaded, within this probe's life.
    assert started_us <= stamp <= out["now_us"]
    assert out["first"] == [[101, stamp, 55, 21, 3, 4], [102, stamp, 7, 1, 0, 0]]
    assert out["probe"] == [INSUFFICIENT_SIZE, 2]
    assert out["too_small"] == [INSUFFICIENT_SIZE, 2]
    assert out["exact"] == [SUCCESS, 2]
    assert out["older"] == out["first"]
    assert out["seen"] == {"error": NOT_FOUND}
    assert out["probe_seen"] == [NOT_FOUND, 0]
    assert out["no_lines"] == [{"error": NOT_SUPPORTED}, [NOT_SUPPORTED, 0]]
    assert out["idle"] == [{"error": NOT_FOUND}, [NOT_FOUND, 0]]
    assert out["video"] == [[12, 1_000_000], [9, 1_000_000]] + [{"error": NOT_SUPPORTED}] * 2


def test_process_utilization_is_restamped_per_period_and_per_reload(probe):
    period = 200_000
    gpu = fake.make_gpu(
        0,
        process_utilization=[fake.FakeProcessUtilization(7, sm=40, memory=10)],
        process_utilization_period=period,
    )
    result = probe(
        UTILIZATION_PRELUDE
        + """
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
first = samples(h, 0)[0][1]
time.sleep(0.45)  # two periods and more
second = samples(h, first)
out["periodic"] = [first, second[0][1] if isinstance(second, list) else second]
# Period 0: stamped when the file is loaded, and only then.
once = fake.FakeProcessUtilization(7, sm=41, memory=10)
fake.write(SCENARIO, fake.FakeScenario(gpus=[replace(fake.make_gpu(0),
           process_utilization=[once], process_utilization_period=0)]))
reloaded = samples(h, 0)
time.sleep(0.3)
out["reloaded"] = [reloaded, samples(h, reloaded[0][1])]
changed = fake.FakeProcessUtilization(7, sm=90, memory=10)
fake.write(SCENARIO, fake.FakeScenario(gpus=[replace(fake.make_gpu(0),
           process_utilization=[changed], process_utilization_period=0)]))
out["changed"] = samples(h, reloaded[0][1])
""",
        fake.FakeScenario(gpus=[gpu]),
    )
    first, second = result.out["periodic"]
    assert second > first and (second - first) % period == 0
    reloaded, again = result.out["reloaded"]
    assert reloaded[0][0::2] == [7, 41, 0] and reloaded[0][1] > second
    assert again == {"error": NOT_FOUND}
    changed = result.out["changed"]
    assert changed[0][2] == 90 and changed[0][1] > reloaded[0][1]


# ---------------------------------------------------------------- MIG

A100 = "NVIDIA A100-SXM4-40GB"


def mig_scenario(**overrides: Any) -> fake.FakeScenario:
    """GPU 0 in MIG mode: GPU instance 1 split in two compute instances, GPU instance 2 whole;
    GPU 1 without MIG; GPU 2 MIG-capable, disabled, enabled at the next reset."""
    migs = [
        fake.FakeMig(1, 0, "1c.3g.20gb", fake.mig_uuid(0, 0), 20 * fake.GIB, 1 * fake.GIB),
        fake.FakeMig(1, 1, "2c.3g.20gb", fake.mig_uuid(0, 1), 20 * fake.GIB, 2 * fake.GIB),
        fake.FakeMig(2, 0, "1g.5gb", fake.mig_uuid(0, 2), 5 * fake.GIB, 0),
    ]
    processes = [
        fake.FakeProcess(301, 1 * fake.GIB, gpu_instance=1, compute_instance=0),
        fake.FakeProcess(302, 2 * fake.GIB, gpu_instance=1, compute_instance=1),
        fake.FakeProcess(303, 3 * fake.GIB, kind="graphics", gpu_instance=1, compute_instance=1),
        fake.FakeProcess(304, 4 * fake.GIB, gpu_instance=1, compute_instance=1),
    ]
    parent = fake.make_gpu(
        0,
        name=A100,
        mig_mode=(1, 1),
        migs=migs,
        processes=processes,
        process_utilization=[fake.FakeProcessUtilization(301, sm=5, memory=5)],
        encoder_utilization=1,
    )
    gpus = [replace(parent, **overrides), fake.make_gpu(1), fake.make_gpu(2, mig_mode=(0, 1))]
    return fake.FakeScenario(gpus=gpus)


MIG_PRELUDE = """
def address(h):
    return ctypes.cast(h, ctypes.c_void_p).value

def mig_handles(h):
    return [N.nvmlDeviceGetMigDeviceHandleByIndex(h, i) for i in range(3)]

def is_mig(h):
    got = N.nvmlDeviceIsMigDeviceHandle(h)  # pynvml hands back the c_uint itself
    return getattr(got, "value", got)
"""


def test_mig_handles_ids_and_identity(probe):
    scenario = mig_scenario()
    result = probe(
        MIG_PRELUDE
        + """
N.nvmlInit()
h0, h1, h2 = handles()
migs = mig_handles(h0)
def identity(m):
    v1, v2 = N.nvmlDeviceGetMemoryInfo(m), N.nvmlDeviceGetMemoryInfo(m, N.nvmlMemory_v2)
    a = N.nvmlDeviceGetAttributes_v2(m)
    return [
        is_mig(m), address(N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)) == address(h0),
        N.nvmlDeviceGetGpuInstanceId(m), N.nvmlDeviceGetComputeInstanceId(m),
        N.nvmlDeviceGetUUID(m), N.nvmlDeviceGetName(m), N.nvmlDeviceGetIndex(m),
        [v1.total, v1.used, v1.free], [v2.total, v2.reserved, v2.used, v2.free],
        [a.multiprocessorCount, a.gpuInstanceSliceCount, a.computeInstanceSliceCount,
         a.memorySizeMB],
        address(N.nvmlDeviceGetHandleByUUID(N.nvmlDeviceGetUUID(m))) == address(m),
    ]
out.update(
    count=N.nvmlDeviceGetCount(),
    modes=[value(N.nvmlDeviceGetMigMode, h) for h in (h0, h1, h2)],
    max=[N.nvmlDeviceGetMaxMigDeviceCount(h) for h in (h0, h1, h2)],
    by_index=[code(N.nvmlDeviceGetMigDeviceHandleByIndex, h0, i) for i in range(8)],
    others=[code(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 0) for h in (h1, h2)],
    distinct=len({address(m) for m in migs} | {address(h) for h in (h0, h1, h2)}),
    migs=[identity(m) for m in migs],
    gpu_handle=[is_mig(h0), N.nvmlDeviceGetName(h0), N.nvmlDeviceGetIndex(h0)] + [
        code(fn, h0) for fn in (N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle,
                                N.nvmlDeviceGetGpuInstanceId, N.nvmlDeviceGetComputeInstanceId,
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
    non_mig_gpu=[is_mig(h1), N.nvmlDeviceGetUtilizationRates(h1).gpu],
)
""",
        scenario,
    )
    out = result.out
    assert out["count"] == 3
    assert out["modes"] == [[1, 1], {"error": NOT_SUPPORTED}, [0, 1]]
    assert out["max"] == [7, 0, 0]
    assert out["by_index"] == [SUCCESS] * 3 + [NOT_FOUND] * 4 + [INVALID_ARGUMENT]
    assert out["others"] == [NOT_SUPPORTED, NOT_SUPPORTED]
    assert out["distinct"] == 6
    gib, mib_per_gib = fake.GIB, 1024
    assert out["migs"] == [
        [1, True, 1, 0, fake.mig_uuid(0, 0), f"{A100} MIG 1c.3g.20gb", 0,
         [20 * gib, gib, 19 * gib], [20 * gib, 0, gib, 19 * gib], [14, 3, 1, 20 * mib_per_gib],
         True],
        [1, True, 1, 1, fake.mig_uuid(0, 1), f"{A100} MIG 2c.3g.20gb", 1,
         [20 * gib, 2 * gib, 18 * gib], [20 * gib, 0, 2 * gib, 18 * gib],
         [28, 3, 2, 20 * mib_per_gib], True],
        [1, True, 2, 0, fake.mig_uuid(0, 2), f"{A100} MIG 1g.5gb", 2,
         [5 * gib, 0, 5 * gib], [5 * gib, 0, 0, 5 * gib], [14, 1, 1, 5 * mib_per_gib], True],
    ]  # fmt: skip
    assert out["gpu_handle"] == [0, A100, 0] + [NOT_SUPPORTED] * 4
    assert out["parent_unsupported"] == [NOT_SUPPORTED] * 3
    assert out["mig_unsupported"] == [NOT_SUPPORTED] * 6
    assert out["non_mig_gpu"] == [0, scenario.gpus[1].utilization_gpu]


def test_mig_processes_carry_their_instances(probe):
    result = probe(
        MIG_PRELUDE
        + """
N.nvmlInit()
h0 = N.nvmlDeviceGetHandleByIndex(0)
migs = mig_handles(h0)
def listed(fn, h):
    return [[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId] for p in fn(h)]
def size_probe(h):
    count = ctypes.c_uint(0)
    rc = raw("nvmlDeviceGetComputeRunningProcesses_v3")(h, ctypes.byref(count), None)
    return [rc, count.value]
out.update(
    parent=listed(N.nvmlDeviceGetComputeRunningProcesses, h0),
    parent_v2=listed(N.nvmlDeviceGetComputeRunningProcesses_v2, h0),
    parent_graphics=listed(N.nvmlDeviceGetGraphicsRunningProcesses, h0),
    migs=[listed(N.nvmlDeviceGetComputeRunningProcesses, m) for m in migs],
    migs_graphics=[listed(N.nvmlDeviceGetGraphicsRunningProcesses_v2, m) for m in migs],
    probes=[size_probe(h) for h in [h0, *migs]],
)
""",
        mig_scenario(),
    )
    out = result.out
    gib = fake.GIB
    first = [301, gib, 1, 0]
    second = [[302, 2 * gib, 1, 1], [304, 4 * gib, 1, 1]]
    assert out["parent"] == out["parent_v2"] == [first, *second]
    assert out["parent_graphics"] == [[303, 3 * gib, 1, 1]]
    assert out["migs"] == [[first], second, []]
    assert out["migs_graphics"] == [[], [[303, 3 * gib, 1, 1]], []]
    assert out["probes"] == [[INSUFFICIENT_SIZE, 3], [INSUFFICIENT_SIZE, 1],
                             [INSUFFICIENT_SIZE, 2], [SUCCESS, 0]]  # fmt: skip


def test_mig_handles_stay_valid_across_reloads(probe):
    result = probe(
        MIG_PRELUDE
        + """
from tests.test_fakenvml import mig_scenario
N.nvmlInit()
h0 = N.nvmlDeviceGetHandleByIndex(0)
migs = mig_handles(h0)
def state():
    return [value(N.nvmlDeviceGetComputeInstanceId, m) for m in migs] + [
        value(lambda m: N.nvmlDeviceGetMemoryInfo(m).used, migs[0])]
out["start"] = state()
base = mig_scenario()
fewer = mig_scenario(migs=[replace(base.gpus[0].migs[0], memory_used=7)],
                     processes=base.gpus[0].processes[:1])
fake.write(SCENARIO, fewer)
out["fewer"] = state() + [code(N.nvmlDeviceGetMigDeviceHandleByIndex, h0, 1)]
fake.write(SCENARIO, mig_scenario(mig_mode=(0, 0), migs=[], processes=[]))
out["disabled"] = state() + [code(N.nvmlDeviceGetMigDeviceHandleByIndex, h0, 0),
                             code(N.nvmlDeviceGetUtilizationRates, h0)]
fake.write(SCENARIO, base)
out["restored"] = state() + [address(N.nvmlDeviceGetMigDeviceHandleByIndex(h0, 2)) ==
                             address(migs[2])]
fake.write(SCENARIO, mig_scenario(lost=True))
out["lost"] = state()
""",
        mig_scenario(),
    )
    out = result.out
    gib = fake.GIB
    invalid = {"error": INVALID_ARGUMENT}
    assert out["start"] == [0, 1, 0, gib]
    assert out["fewer"] == [0, invalid, invalid, 7, NOT_FOUND]
    assert out["disabled"] == [invalid, invalid, invalid, invalid, NOT_SUPPORTED, SUCCESS]
    assert out["restored"] == [0, 1, 0, gib, True]
    assert out["lost"] == [{"error": GPU_IS_LOST}] * 4


# Each new entry point and its pynvml call, on GPU 0 (in MIG mode: g, or its MIG handle m) or
# GPU 1 (with samples and video utilization: g1).
NEW_ENTRY_POINTS = {
    "nvmlDeviceGetProcessUtilization": "N.nvmlDeviceGetProcessUtilization(g1, 0)",
    "nvmlDeviceGetEncoderUtilization": "N.nvmlDeviceGetEncoderUtilization(g1)",
    "nvmlDeviceGetDecoderUtilization": "N.nvmlDeviceGetDecoderUtilization(g1)",
    "nvmlDeviceGetMigMode": "N.nvmlDeviceGetMigMode(g)",
    "nvmlDeviceGetMaxMigDeviceCount": "N.nvmlDeviceGetMaxMigDeviceCount(g)",
    "nvmlDeviceGetMigDeviceHandleByIndex": "N.nvmlDeviceGetMigDeviceHandleByIndex(g, 0)",
    "nvmlDeviceIsMigDeviceHandle": "N.nvmlDeviceIsMigDeviceHandle(m)",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle": (
        "N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)"
    ),
    "nvmlDeviceGetGpuInstanceId": "N.nvmlDeviceGetGpuInstanceId(m)",
    "nvmlDeviceGetComputeInstanceId": "N.nvmlDeviceGetComputeInstanceId(m)",
    "nvmlDeviceGetAttributes_v2": "N.nvmlDeviceGetAttributes_v2(m)",
}


def fault_scenario(kind: str) -> fake.FakeScenario:
    """``healthy``; ``fail``: each new entry point fails with its own code, on the GPU its
    call goes to (a MIG handle through its parent); ``block``: two of them sleep 0.5 s."""
    parent = mig_scenario().gpus[0]
    sampled = fake.make_gpu(
        1,
        process_utilization=[fake.FakeProcessUtilization(1, sm=2, memory=3)],
        encoder_utilization=1,
        decoder_utilization=2,
    )
    if kind == "fail":
        for code, name in enumerate(NEW_ENTRY_POINTS, start=100):
            (sampled if "g1" in NEW_ENTRY_POINTS[name] else parent).fail[name] = code
    elif kind == "block":
        sampled.block = {"nvmlDeviceGetProcessUtilization": 0.5}
        parent.block = {"nvmlDeviceGetGpuInstanceId": 0.5}
    return fake.FakeScenario(gpus=[parent, sampled])


def test_fail_and_block_on_the_new_entry_points(probe):
    calls = "{" + ", ".join(f"{k!r}: lambda: {v}" for k, v in NEW_ENTRY_POINTS.items()) + "}"
    result = probe(
        f"""
from tests.test_fakenvml import fault_scenario
CALLS = {calls}
N.nvmlInit()
g, g1 = handles()
m = N.nvmlDeviceGetMigDeviceHandleByIndex(g, 0)
out["healthy"] = {{name: code(call) for name, call in CALLS.items()}}
fake.write(SCENARIO, fault_scenario("fail"))
out["failing"] = {{name: code(call) for name, call in CALLS.items()}}
fake.write(SCENARIO, fault_scenario("block"))
out["blocked"] = [
    timed(code, CALLS[name]) for name in (
        "nvmlDeviceGetProcessUtilization", "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetComputeInstanceId",
    )
]
""",
        fault_scenario("healthy"),
    )
    out = result.out
    assert out["healthy"] == dict.fromkeys(NEW_ENTRY_POINTS, SUCCESS)
    codes = dict(zip(NEW_ENTRY_POINTS, range(100, 100 + len(NEW_ENTRY_POINTS))))
    assert out["failing"] == codes
    (slow_code, slow), (mig_code, mig_slow), (fast_code, fast) = out["blocked"]
    assert slow_code == mig_code == fast_code == SUCCESS
    # The MIG handle's call sleeps by its parent's block; another entry point does not.
    assert 0.5 <= slow < 2.5 and 0.5 <= mig_slow < 2.5 and fast < 0.4


# ---------------------------------------------------------------- threads and memory


def test_concurrent_calls_while_the_file_changes(probe):
    result = probe(
        """
def scenario(n, temperature):
    return fake.FakeScenario(gpus=[fake.make_gpu(i, temperature=temperature) for i in range(n)])
N.nvmlInit()
h0, h1 = handles()
stop = threading.Event()
seen, errors = set(), []
def reader():
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
    fake.write(SCENARIO, scenario(1 + k % 2, 50 + k % 3))
    time.sleep(0.005)
stop.set()
for thread in threads:
    thread.join()
fake.write(SCENARIO, scenario(2, 77))
final = [N.nvmlDeviceGetTemperature(h, 0) for h in (h0, h1)]
out.update(seen=sorted(seen), errors=errors, final=final)
""",
        fake.idle(2),
    )
    assert result.out["errors"] == []
    assert set(result.out["seen"]) <= {50, 51, 52, fake.idle(2).gpus[0].temperature, 32}
    assert result.out["final"] == [77, 77]


def test_memory_does_not_grow_across_reloads(probe):
    result = probe(
        """
big = [fake.render(fake.busy(64, range(1, 4097), seed=s)) for s in (1, 2)]
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def reload(k):
    temporary = SCENARIO.with_suffix(".tmp")
    temporary.write_bytes(big[k % 2])
    os.replace(temporary, SCENARIO)
    N.nvmlDeviceGetComputeRunningProcesses(h)
for k in range(50):
    reload(k)
before = rss()
for k in range(400):
    reload(k)
out["growth"] = rss() - before
out["count"] = N.nvmlDeviceGetCount()
""",
        fake.idle(1),
    )
    assert result.out["count"] == 64
    # A leaked state would be about 150 KiB per reload, 60 MiB over 400 reloads.
    assert result.out["growth"] < 4 * 1024 * 1024, result.out


# ---------------------------------------------------------------- GPU health

HEALTH_GETTERS = """
GETTERS = {
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
def health(h):
    return {key: value(fn, h, *args) for key, (fn, *args) in GETTERS.items()}
"""


def _health_gpu(index: int, **overrides: Any) -> fake.FakeGpu:
    """An Ampere-or-later GPU with every health key given."""
    values: dict[str, Any] = {
        "ecc_corrected": 5,
        "ecc_uncorrected": 1,
        "ecc_aggregate_corrected": 120,
        "ecc_aggregate_uncorrected": 3,
        "pcie_replay": 17,
        "pcie_link": fake.FakePcieLink(max_gen=5, max_width=16, gen=4, width=8),
        "pcie_throughput": (1200, 3400),
        "nvlinks": [
            fake.FakeNvLink(crc_flit=1, crc_data=2, replay=3, recovery=4),
            fake.FakeNvLink(active=False, crc_flit=10, crc_data=20, replay=30, recovery=40),
            fake.FakeNvLink(crc_flit=100),
        ],
        "remapped_rows": fake.FakeRemappedRows(2, 1, pending=True, failure=False),
    }
    return fake.make_gpu(index, **{**values, **overrides})


def test_health_values_through_pynvml(probe):
    ampere = _health_gpu(0)
    volta = fake.make_gpu(1, retired_pages={"sbe": 2, "dbe": 1}, retired_pages_pending=True)
    scenario = fake.FakeScenario(gpus=[ampere, volta, fake.make_gpu(2)])
    result = probe(
        HEALTH_GETTERS
        + """
N.nvmlInit()
h0, h1, h2 = handles()
out["gpus"] = [health(h) for h in (h0, h1, h2)]
out["ecc_volatile"] = [N.nvmlDeviceGetTotalEccErrors(h0, t, N.NVML_VOLATILE_ECC) for t in (0, 1)]
out["ecc_aggregate"] = [N.nvmlDeviceGetTotalEccErrors(h0, t, N.NVML_AGGREGATE_ECC) for t in (0, 1)]
out["pcie_rx"] = N.nvmlDeviceGetPcieThroughput(h0, N.NVML_PCIE_UTIL_RX_BYTES)
out["pcie_bad_counter"] = code(N.nvmlDeviceGetPcieThroughput, h0, 2)
out["links"] = [value(N.nvmlDeviceGetNvLinkState, h0, link) for link in range(4)]
out["ecc_bad_type"] = code(N.nvmlDeviceGetTotalEccErrors, h0, 2, 0)
""",
        scenario,
    )
    ampere_out, volta_out, bare = result.out["gpus"]
    assert ampere_out == {
        "remapped_rows": [2, 1, 1, 0],
        "retired_sbe": {"error": NOT_SUPPORTED},
        "retired_dbe_v2": {"error": NOT_SUPPORTED},
        "retired_pending": {"error": NOT_SUPPORTED},
        "ecc_aggregate": 120,
        "pcie_replay": 17,
        "pcie_gen": 4,
        "pcie_max_gen": 5,
        "pcie_width": 8,
        "pcie_max_width": 16,
        "pcie_tx": 1200,
        "nvlink_state": 1,
    }
    sbe_pages = [(1 << 32) + i * 4096 for i in range(2)]
    assert volta_out["remapped_rows"] == {"error": NOT_SUPPORTED}
    assert volta_out["retired_sbe"] == sbe_pages
    assert volta_out["retired_dbe_v2"] == [{"address": 2 << 32, "timestamp": 1_700_000_000}]
    assert volta_out["retired_pending"] == 1
    # Without ecc_aggregate_*, the aggregate counter is the volatile one, as before.
    assert volta_out["ecc_aggregate"] == volta.ecc_corrected
    unsupported = {key for key, got in bare.items() if got == {"error": NOT_SUPPORTED}}
    assert unsupported == set(bare) - {"ecc_aggregate"}
    assert result.out["ecc_volatile"] == [5, 1]
    assert result.out["ecc_aggregate"] == [120, 3]
    assert result.out["pcie_rx"] == 3400
    assert result.out["pcie_bad_counter"] == INVALID_ARGUMENT
    assert result.out["links"] == [1, 0, 1, {"error": INVALID_ARGUMENT}]
    assert result.out["ecc_bad_type"] == INVALID_ARGUMENT
    assert result.stderr == ""


def test_retired_pages_size_query(probe):
    gpu = fake.make_gpu(0, retired_pages={"sbe": 3})
    result = probe(
        """
N.nvmlInit()
h = handles()[0]
def pages(name, cause, size, null_buffer=False, times=False):
    count = ctypes.c_uint(size)
    addresses = None if null_buffer else (ctypes.c_ulonglong * max(size, 1))()
    stamps = (ctypes.c_ulonglong * max(size, 1))()
    args = [h, cause, ctypes.byref(count), addresses] + ([stamps] if times else [])
    rc = raw(name)(*args)
    got = list(addresses[: count.value]) if rc == 0 and addresses is not None else []
    return [rc, count.value, got] + ([list(stamps[: count.value])] if times and rc == 0 else [])
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
""",
        fake.FakeScenario(gpus=[gpu]),
    )
    addresses = [(1 << 32) + i * 4096 for i in range(3)]
    assert result.out["probe"] == [INSUFFICIENT_SIZE, 3, []]
    assert result.out["too_small"] == [INSUFFICIENT_SIZE, 3, []]
    assert result.out["exact"] == [SUCCESS, 3, addresses]
    assert result.out["larger"] == [SUCCESS, 3, addresses]
    assert result.out["none_of_cause"] == [SUCCESS, 0, []]
    assert result.out["null_buffer"] == [INVALID_ARGUMENT, 5, []]
    assert result.out["bad_cause"] == [INVALID_ARGUMENT, 8, []]
    assert result.out["v2_probe"] == [INSUFFICIENT_SIZE, 3, []]
    assert result.out["v2"] == [SUCCESS, 3, addresses, [1_700_000_000 + i for i in range(3)]]
    assert result.out["null_count"] == INVALID_ARGUMENT


def test_field_values_each_with_its_own_return(probe):
    scenario = fake.FakeScenario(gpus=[_health_gpu(0), fake.make_gpu(1)])
    result = probe(
        """
N.nvmlInit()
h0, h1 = handles()
F = [
    N.NVML_FI_DEV_NVLINK_LINK_COUNT, N.NVML_FI_DEV_PCIE_REPLAY_COUNTER,
    N.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L0, N.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L1,
    N.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_L1, N.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_L0,
    N.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
    N.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
    N.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L3, N.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L6,
    (N.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY, 1), (N.NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY, 0),
    (N.NVML_FI_DEV_NVLINK_ERROR_DL_CRC, 1), (N.NVML_FI_DEV_NVLINK_ERROR_DL_CRC, 3),
    N.NVML_FI_DEV_RETIRED_SBE, N.NVML_FI_DEV_ECC_CURRENT, 310,  # NVML_FI_MAX in nvml.h
]
def fields(h):
    before = time.time()
    values = N.nvmlDeviceGetFieldValues(h, F)
    after = time.time()
    rows = []
    for v in values:
        wide = v.valueType == N.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        number = (v.value.ullVal if wide else v.value.uiVal) if v.nvmlReturn == 0 else None
        rows.append([v.fieldId, v.scopeId, v.nvmlReturn, v.valueType, number])
        assert before - 1 <= v.timestamp / 1e6 <= after + 1, v.timestamp
        assert v.latencyUsec == 0
    return rows
out["h0"] = fields(h0)
out["h1"] = fields(h1)
empty = (N.c_nvmlFieldValue_t * 1)()
out["null"] = raw("nvmlDeviceGetFieldValues")(h0, 1, None)
out["zero"] = raw("nvmlDeviceGetFieldValues")(h0, 0, empty)
out["negative"] = raw("nvmlDeviceGetFieldValues")(h0, -1, empty)
""",
        scenario,
    )
    UINT, ULL = 1, 3
    assert result.out["h0"] == [
        [91, 0, SUCCESS, UINT, 3],
        [94, 0, SUCCESS, UINT, 17],
        [32, 0, SUCCESS, ULL, 1],  # crc_flit, link 0
        [40, 0, SUCCESS, ULL, 20],  # crc_data, link 1
        [47, 0, SUCCESS, ULL, 30],  # replay, link 1
        [53, 0, SUCCESS, ULL, 4],  # recovery, link 0
        [38, 0, SUCCESS, ULL, 111],  # crc_flit, all links
        [59, 0, SUCCESS, ULL, 44],  # recovery, all links
        [35, 0, INVALID_ARGUMENT, ULL, None],  # link 3 of 3
        [96, 0, INVALID_ARGUMENT, ULL, None],  # link 6 of 3
        [161, 1, SUCCESS, ULL, 30],
        [162, 0, SUCCESS, ULL, 4],
        [163, 1, SUCCESS, ULL, 30],  # CRC errors of both kinds
        [163, 3, INVALID_ARGUMENT, ULL, None],
        [29, 0, NOT_SUPPORTED, UINT, None],  # row remapping GPU: no retired pages
        [1, 0, NOT_SUPPORTED, UINT, None],  # a field this library does not serve
        [310, 0, INVALID_ARGUMENT, UINT, None],
    ]
    # A GPU without the keys: every field NOT_SUPPORTED (beyond NVML_FI_MAX: INVALID_ARGUMENT).
    codes = [row[2] for row in result.out["h1"]]
    assert codes == [NOT_SUPPORTED] * 16 + [INVALID_ARGUMENT]
    assert result.out["null"] == INVALID_ARGUMENT
    assert result.out["zero"] == SUCCESS
    assert result.out["negative"] == INVALID_ARGUMENT


EVENTS = """
def event(data):
    return [N.nvmlDeviceGetIndex(data.device), data.eventType, data.eventData,
            data.gpuInstanceId, data.computeInstanceId]
def drain(event_set, timeout_ms=0):
    got = []
    while True:
        try:
            got.append(event(N.nvmlEventSetWait_v2(event_set, timeout_ms)))
        except N.NVMLError as error:
            got.append(error.value)
            return got
XID = N.nvmlEventTypeXidCriticalError
"""


def _xids(*codes_and_ids: tuple[int, int | None]) -> list[fake.FakeXid]:
    return [fake.FakeXid(code, id=given) for code, given in codes_and_ids]


def test_xid_events_are_delivered_once_across_reloads(probe):
    gpus = [
        fake.make_gpu(0, xids=_xids((79, None), (48, None))),
        fake.make_gpu(1, xids=_xids((13, 5))),
        fake.make_gpu(2, xids=_xids((31, None))),  # never registered
    ]
    result = probe(
        EVENTS
        + """
N.nvmlInit()
h0, h1, h2 = handles()
out["supported"] = N.nvmlDeviceGetSupportedEventTypes(h0)
s = N.nvmlEventSetCreate()
N.nvmlDeviceRegisterEvents(h0, XID | N.nvmlEventTypePState, s)
N.nvmlDeviceRegisterEvents(h1, XID, s)
out["first"] = drain(s)
GPUS = [fake.make_gpu(0, xids=[fake.FakeXid(79), fake.FakeXid(48)]),
        fake.make_gpu(1, xids=[fake.FakeXid(13, id=5)]), fake.make_gpu(2, xids=[fake.FakeXid(31)])]
# The same lines again, plus one: only the new one comes.
GPUS[0].xids.append(fake.FakeXid(48))
fake.write(SCENARIO, fake.FakeScenario(gpus=GPUS))
out["appended"] = drain(s)
# A changed code at the same id is a new event; an unchanged line is not.
GPUS[1].xids = [fake.FakeXid(94, id=5)]
fake.write(SCENARIO, fake.FakeScenario(gpus=GPUS))
out["changed"] = drain(s)
# A second set gets nothing already delivered.
s2 = N.nvmlEventSetCreate()
N.nvmlDeviceRegisterEvents(h0, XID, s2)
out["second_set"] = drain(s2)
N.nvmlEventSetFree(s2)
N.nvmlEventSetFree(s)
out["freed_wait"] = code(N.nvmlEventSetWait_v2, s, 0)
out["freed_register"] = code(N.nvmlDeviceRegisterEvents, h0, XID, s)
out["double_free"] = code(N.nvmlEventSetFree, s)
""",
        fake.FakeScenario(gpus=gpus),
    )
    no_instance = 0xFFFFFFFF
    xid_type = 8

    def delivered(index: int, xid: int) -> list[int]:
        return [index, xid_type, xid, no_instance, no_instance]

    assert result.out["supported"] == 0xF
    assert result.out["first"] == [delivered(0, 79), delivered(0, 48), delivered(1, 13), TIMEOUT]
    assert result.out["appended"] == [delivered(0, 48), TIMEOUT]
    assert result.out["changed"] == [delivered(1, 94), TIMEOUT]
    assert result.out["second_set"] == [TIMEOUT]
    assert result.out["freed_wait"] == INVALID_ARGUMENT
    assert result.out["freed_register"] == INVALID_ARGUMENT
    assert result.out["double_free"] == UNKNOWN


def test_event_registration_checks_the_types(probe):
    gpus = [fake.make_gpu(0, event_types=0x8), fake.make_gpu(1)]
    result = probe(
        EVENTS
        + """
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
fake.write(SCENARIO, fake.FakeScenario(gpus=[fake.make_gpu(0), fake.make_gpu(1, lost=True)]))
out["lost"] = code(N.nvmlDeviceRegisterEvents, h1, XID, s)
out["lost_types"] = code(N.nvmlDeviceGetSupportedEventTypes, h1)
""",
        fake.FakeScenario(gpus=gpus),
    )
    assert result.out == {
        "supported": 0x8,
        "unsupported": NOT_SUPPORTED,
        "outside_all": INVALID_ARGUMENT,
        "null_set": INVALID_ARGUMENT,
        "null_data": INVALID_ARGUMENT,
        "null_create": INVALID_ARGUMENT,
        "supported_ok": SUCCESS,
        "lost": GPU_IS_LOST,
        "lost_types": GPU_IS_LOST,
    }


def test_xid_injected_by_a_reload_mid_wait(probe):
    result = probe(
        EVENTS
        + """
N.nvmlInit()
h0, h1 = handles()
s = N.nvmlEventSetCreate()
N.nvmlDeviceRegisterEvents(h1, XID, s)
got = {}
def reader():
    # Like an exporter's event thread: 1000 ms waits in a loop.
    while "event" not in got:
        try:
            data = N.nvmlEventSetWait_v2(s, 1000)
            got["event"], got["at"] = event(data), time.monotonic()
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
out["after"] = drain(s, 50)
""",
        fake.idle(2),
    )
    assert result.out["event"] == [1, 8, 79, 0xFFFFFFFF, 0xFFFFFFFF]
    # The wait polls the file every 20 ms; well within a reader's 1 s timeout.
    assert result.out["latency"] is not None and result.out["latency"] < 1.0, result.out
    assert all(seconds < 0.5 for _, seconds in result.out["reads"]), result.out["reads"]
    assert result.out["after"] == [TIMEOUT]


def test_wait_without_events_times_out(probe):
    result = probe(
        EVENTS
        + """
N.nvmlInit()
s = N.nvmlEventSetCreate()
N.nvmlDeviceRegisterEvents(handles()[0], XID, s)
out["short"] = timed(code, N.nvmlEventSetWait_v2, s, 300)
out["zero"] = timed(code, N.nvmlEventSetWait_v2, s, 0)
out["unversioned"] = raw("nvmlEventSetWait")(s, ctypes.byref(N.c_nvmlEventData_t()), 0)
N.nvmlShutdown()
out["after_shutdown"] = code(N.nvmlEventSetWait_v2, s, 0)
""",
        fake.idle(1),
    )
    rc, elapsed = result.out["short"]
    assert rc == TIMEOUT and 0.3 <= elapsed < 2.0
    rc, elapsed = result.out["zero"]
    assert rc == TIMEOUT and elapsed < 0.5
    assert result.out["unversioned"] == TIMEOUT
    assert result.out["after_shutdown"] == UNINITIALIZED


def test_a_lost_gpu_still_delivers_its_xids(probe):
    result = probe(
        EVENTS
        + """
N.nvmlInit()
h0, h1 = handles()
s = N.nvmlEventSetCreate()
N.nvmlDeviceRegisterEvents(h1, XID, s)
gpus = [fake.make_gpu(0), fake.make_gpu(1, lost=True, xids=[fake.FakeXid(79)])]
fake.write(SCENARIO, fake.FakeScenario(gpus=gpus))
data = N.nvmlEventSetWait_v2(s, 1000)
out["event"] = [data.eventData, code(N.nvmlDeviceGetIndex, data.device)]
out["then"] = drain(s)
out["health"] = [
    code(N.nvmlDeviceGetPcieReplayCounter, h1), code(N.nvmlDeviceGetFieldValues, h1, [91])
]
""",
        fake.idle(2),
    )
    assert result.out["event"] == [79, GPU_IS_LOST]  # the handle is the lost GPU's
    assert result.out["then"] == [TIMEOUT]
    assert result.out["health"] == [GPU_IS_LOST, GPU_IS_LOST]


# Every health entry point, called through pynvml (or its raw symbol) on GPU 0.
HEALTH_CALLS = """
def call(name, h, s):
    calls = {
        "nvmlEventSetCreate": lambda: N.nvmlEventSetCreate(),
        "nvmlEventSetFree": lambda: N.nvmlEventSetFree(N.nvmlEventSetCreate()),
        "nvmlDeviceGetSupportedEventTypes": lambda: N.nvmlDeviceGetSupportedEventTypes(h),
        "nvmlDeviceRegisterEvents": lambda: N.nvmlDeviceRegisterEvents(h, 8, s),
        "nvmlEventSetWait_v2": lambda: N.nvmlEventSetWait_v2(s, 0),
        "nvmlEventSetWait": lambda: N._nvmlCheckReturn(
            raw("nvmlEventSetWait")(s, ctypes.byref(N.c_nvmlEventData_t()), 0)),
        "nvmlDeviceGetRemappedRows": lambda: N.nvmlDeviceGetRemappedRows(h),
        "nvmlDeviceGetRetiredPages": lambda: N.nvmlDeviceGetRetiredPages(h, 0),
        "nvmlDeviceGetRetiredPages_v2": lambda: N.nvmlDeviceGetRetiredPages_v2(h, 0),
        "nvmlDeviceGetRetiredPagesPendingStatus": (
            lambda: N.nvmlDeviceGetRetiredPagesPendingStatus(h)),
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
"""
HEALTH_ENTRY_POINTS = [
    "nvmlEventSetCreate", "nvmlEventSetFree", "nvmlDeviceGetSupportedEventTypes",
    "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2", "nvmlEventSetWait",
    "nvmlDeviceGetRemappedRows", "nvmlDeviceGetRetiredPages", "nvmlDeviceGetRetiredPages_v2",
    "nvmlDeviceGetRetiredPagesPendingStatus", "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetPcieReplayCounter", "nvmlDeviceGetCurrPcieLinkGeneration",
    "nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetMaxPcieLinkWidth", "nvmlDeviceGetPcieThroughput", "nvmlDeviceGetNvLinkState",
    "nvmlDeviceGetFieldValues",
]  # fmt: skip
DEVICE_HEALTH_ENTRY_POINTS = [name for name in HEALTH_ENTRY_POINTS if "Device" in name]


def test_fail_and_block_on_every_health_entry_point(probe):
    gpu = _health_gpu(0, remapped_rows=None, retired_pages={"sbe": 1})
    names = json.dumps([HEALTH_ENTRY_POINTS, DEVICE_HEALTH_ENTRY_POINTS])
    result = probe(
        HEALTH_CALLS
        + f"""
NAMES, DEVICE = json.loads({names!r})
N.nvmlInit()
h0, h1 = handles()
s = N.nvmlEventSetCreate()
N.nvmlDeviceRegisterEvents(h0, 8, s)
out["clean"] = {{name: call(name, h0, s) for name in NAMES}}
start = SCENARIO.read_bytes()
def with_lines(lines, *, per_gpu=False):
    # Global lines go before the first [gpu], per-GPU ones right after it (GPU 0).
    text = "".join(line + "\\n" for line in lines).encode()
    new = b"[gpu]\\n" + text if per_gpu else text + b"[gpu]"
    SCENARIO.write_bytes(start.replace(b"[gpu]", new, 1))
with_lines([f"fail {{n}} 17" for n in NAMES])
out["global"] = {{name: call(name, h0, s) for name in NAMES}}
with_lines([f"fail {{n}} 999" for n in DEVICE], per_gpu=True)
out["per_gpu"] = {{name: [call(name, h0, s), call(name, h1, s)] for name in DEVICE}}
with_lines(["block nvmlEventSetWait_v2 0.5", "block nvmlDeviceGetNvLinkState 0.5"])
blocked = ("nvmlEventSetWait_v2", "nvmlDeviceGetNvLinkState")
out["blocked"] = [timed(call, name, h0, s) for name in blocked]
out["unblocked"] = timed(call, "nvmlDeviceGetPcieReplayCounter", h0, s)
""",
        fake.FakeScenario(gpus=[gpu, fake.make_gpu(1)]),
    )
    normal = {"nvmlEventSetWait_v2": TIMEOUT, "nvmlEventSetWait": TIMEOUT}
    normal["nvmlDeviceGetRemappedRows"] = NOT_SUPPORTED  # a GPU that retires pages
    assert result.out["clean"] == {name: normal.get(name, SUCCESS) for name in HEALTH_ENTRY_POINTS}
    assert result.out["global"] == {name: 17 for name in HEALTH_ENTRY_POINTS}
    assert set(result.out["per_gpu"]) == set(DEVICE_HEALTH_ENTRY_POINTS)
    for name, (gpu0, gpu1) in result.out["per_gpu"].items():
        assert (gpu0, gpu1 != UNKNOWN) == (UNKNOWN, True), name
    (wait_rc, wait_seconds), (link_rc, link_seconds) = result.out["blocked"]
    assert (wait_rc, link_rc) == (TIMEOUT, SUCCESS)
    assert 0.5 <= wait_seconds < 2.5 and 0.5 <= link_seconds < 2.5
    assert result.out["unblocked"][1] < 0.5


# ---------------------------------------------------------------- file format


BAD_FILES = [
    ("bogus 1\n", 1, "unknown key 'bogus'"),
    ("temperature 3\n", 1, "'temperature' belongs in a [gpu] section"),
    ("[gpu]\ntemperature hot\n", 2, "temperature needs an integer from 0 to 4294967295"),
    ("[gpu]\nutilization_gpu 101\n", 2, "utilization_gpu needs an integer from 0 to 100"),
    ("[gpu]\npstate 16\n", 2, "pstate needs 0 to 15, or 32 (unknown), got 16"),
    ("[gpu]\npstate 33\n", 2, "pstate needs an integer from 0 to 32"),
    ("[gpu]\ntemperature 40 41\n", 2, "unexpected text after the value of temperature"),
    ("[gpu]\nfail nvmlDeviceGetNothing 3\n", 2, "unknown entry point 'nvmlDeviceGetNothing'"),
    ("[gpu]\nfail nvmlDeviceGetName\n", 2, "fail needs an nvmlReturn_t code"),
    ("[gpu]\nblock nvmlDeviceGetName -1\n", 2, "block needs seconds from 0 to 86400"),
    ("[gpu]\nblock nvmlDeviceGetName nan\n", 2, "block needs seconds"),
    ("[gpu]\nprocess cpu 1 2\n", 2, "process kind must be compute or graphics"),
    ("[gpu]\nprocess compute 1\n", 2, "process needs used GPU memory in bytes"),
    ("[gpu]\nname a\nname b\n", 3, "duplicate key 'name'"),
    ("[gpu]\nname " + "x" * 96 + "\n", 2, "name must be 1 to 95 bytes, got 96"),
    ("[gpu]\nlost now\n", 2, "lost takes no value"),
    ("[gpu] extra\n", 1, "[gpu] takes no value"),
    ("\n[gpu]\nmemory_total 10\nmemory_used 8\nmemory_reserved 3\n", 2, "GPU 0: memory_used"),
    ("[gpu]\nname a\0b\n", 2, "NUL byte"),
    ("[gpu]\n" * 65, 65, "more than 64 GPUs"),
    ("[gpu]\nencoder_utilization 101\n", 2, "encoder_utilization needs an integer from 0 to 100"),
    ("[gpu]\nprocess_utilization 5 101 0 0 0\n", 2, "needs sm percent from 0 to 100"),
    ("[gpu]\nprocess_utilization 5 1 2 3\n", 2, "needs decoder percent from 0 to 100"),
    ("[gpu]\nprocess_utilization_period 1\nprocess_utilization_period 2\n", 3, "duplicate"),
    ("[gpu]\nmig_mode 1 2\n", 2, "mig_mode needs the current and the pending mode"),
    (
        "[gpu]\nmig_mode 0 1\nmig 1 0 1g.10gb MIG-a 10 0\n",
        3,
        "a mig line needs 'mig_mode 1 <pending>'",
    ),
    ("[gpu]\nmig_mode 1 1\nmig 1 0 big MIG-a 10 0\n", 3, "mig needs a profile such as"),
    ("[gpu]\nmig_mode 1 1\nmig 1 0 2c.1g.5gb MIG-a 10 0\n", 3, "mig needs a profile"),
    ("[gpu]\nmig_mode 1 1\nmig 1 0 1g.10gb MIG-a 10 11\n", 3, "at most memory_total"),
    (
        "[gpu]\nmig_mode 1 1\nmig 1 0 1g.10gb MIG-a 10 0\nmig 1 0 1g.10gb MIG-a 10 0\n",
        4,
        "a second mig for GPU instance 1",
    ),
    (
        "[gpu]\nmig_mode 1 1\n" + "".join(f"mig {i} 0 1g.5gb M{i} 5 0\n" for i in range(8)),
        10,
        "more than 7 MIG devices",
    ),
    ("[gpu]\nmig_mode 1 1\nprocess compute 5 10 1 0\n", 3, "no mig line above declares it"),
    ("[gpu]\nmig_mode 1 1\nprocess compute 5 10\n", 1, "GPU 0 is in MIG mode: process 5"),
    ("[gpu]\nprocess compute 5 10 1\n", 2, "process needs a compute instance id"),
    (
        "[gpu]\nname " + "x" * 90 + "\nmig_mode 1 1\nmig 1 0 1g.10gb MIG-a 10 0\n",
        1,
        "would be 102 bytes",
    ),
    ("xid 79\n", 1, "'xid' belongs in a [gpu] section"),
    ("[gpu]\npcie_link 4 16 5 8\n", 2, "pcie_link: gen 5 x8 exceeds the maximum gen 4 x16"),
    ("[gpu]\npcie_link 4 16 0 8\n", 2, "pcie_link: generations and widths start at 1"),
    ("[gpu]\npcie_link 7 16 4 8\n", 2, "pcie_link: max_gen needs an integer from 0 to 6"),
    ("[gpu]\npcie_throughput 1\n", 2, "pcie_throughput: rx_kbps needs an integer"),
    ("[gpu]\nnvlink 0 1 0 0 0 0\n", 2, "nvlink: give nvlink_links earlier"),
    ("[gpu]\nnvlink_links 2\nnvlink 2 1 0 0 0 0\n", 3, "link 2 is not below nvlink_links 2"),
    (
        "[gpu]\nnvlink_links 2\nnvlink 0 2 0 0 0 0\n",
        3,
        "nvlink: active needs an integer from 0 to 1",
    ),
    ("[gpu]\nnvlink_links 37\n", 2, "nvlink_links needs an integer from 0 to 36"),
    (
        "[gpu]\nnvlink_links 2\nnvlink 1 1 0 0 0 0\nnvlink 1 0 0 0 0 0\n",
        4,
        "a second nvlink line for link 1",
    ),
    ("[gpu]\nremapped_rows 1 0 0 0\nretired_pages sbe 1\n", 3, "exclude each other"),
    ("[gpu]\nretired_pages_pending 1\nremapped_rows 1 0 0 0\n", 3, "exclude each other"),
    ("[gpu]\nremapped_rows 1 0 2 0\n", 2, "remapped_rows: pending needs an integer from 0 to 1"),
    ("[gpu]\nretired_pages tbe 1\n", 2, "retired_pages: cause must be sbe or dbe, got 'tbe'"),
    ("[gpu]\nretired_pages sbe 1025\n", 2, "retired_pages: count needs an integer from 0 to 1024"),
    (
        "[gpu]\nretired_pages dbe 1\nretired_pages dbe 2\n",
        3,
        "a second retired_pages line for cause dbe",
    ),
    ("[gpu]\nxid 79\nxid 48 0\n", 3, "xid: id 0 is already used"),
    ("[gpu]\nxid 79 1 2\n", 2, "unexpected text after the values of xid"),
    ("[gpu]\nxid bad\n", 2, "xid: code needs an integer"),
    ("[gpu]\n" + "xid 1\n" * 65, 66, "more than 64 xid lines"),
    ("[gpu]\nevent_types 0x10000\n", 2, "event_types: 0x10000 holds bits outside nvmlEventTypeAll"),
    ("[gpu]\nevent_types 8\nevent_types 8\n", 3, "duplicate key 'event_types'"),
    ("[gpu]\npcie_replay 1\npcie_replay 2\n", 3, "duplicate key 'pcie_replay'"),
]


def test_bad_files_are_rejected_with_file_and_line(probe, tmp_path):
    cases = json.dumps([text for text, _, _ in BAD_FILES])
    result = probe(
        f"""
out["codes"] = []
for text in json.loads({cases!r}):
    SCENARIO.write_bytes(text.encode())
    out["codes"].append(code(N.nvmlInit))
""",
        fake.idle(1),
    )
    assert result.out["codes"] == [UNKNOWN] * len(BAD_FILES)
    logged = result.stderr.splitlines()
    assert len(logged) == len(BAD_FILES), result.stderr
    for line, (_, number, message) in zip(logged, BAD_FILES):
        assert line.startswith(f"fake-nvml: {tmp_path / 'scenario.scn'}:{number}: "), line
        assert message in line, line


def test_format_details(probe):
    text = (
        b"  # indented comment\r\n"
        b"driver_version 1.2.3 # not a comment: text runs to the end of the line\n"
        b"cuda_driver_version 12040   # a comment after a number\n"
        b"\n"
        b"[gpu]   # the first GPU\n"
        b"name\t\tTabbed  Name\t \r\n"
        b"minor_number 010\n"  # decimal, not octal
        b"throttle_reasons 0xFF\n"
        b"block nvmlDeviceGetName 0.05\n"
        b"process graphics 7 0x10\n"
    )
    result = probe(
        """
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
out.update(driver=N.nvmlSystemGetDriverVersion(), cuda=N.nvmlSystemGetCudaDriverVersion(),
           name=N.nvmlDeviceGetName(h), minor=N.nvmlDeviceGetMinorNumber(h),
           throttle=N.nvmlDeviceGetCurrentClocksEventReasons(h),
           graphics=[[p.pid, p.usedGpuMemory] for p in N.nvmlDeviceGetGraphicsRunningProcesses(h)])
""",
        text,
    )
    assert result.out == {
        "driver": "1.2.3 # not a comment: text runs to the end of the line",
        "cuda": 12040,
        "name": "Tabbed  Name",
        "minor": 10,
        "throttle": 0xFF,
        "graphics": [[7, 16]],
    }
    assert result.stderr == ""


def test_hostile_names_come_back_byte_for_byte(probe):
    data = (SHIPPED / "hostile.scn").read_bytes()
    names = [line[5:] for line in data.splitlines() if line.startswith(b"name ")]
    serials = [line[7:] for line in data.splitlines() if line.startswith(b"serial ")]
    assert any(b"\xff" in name for name in names) and any(b"<script>" in n for n in names)
    result = probe(
        """
N.nvmlInit()
get_name = N.nvmlDeviceGetName.__wrapped__  # the bytes, before pynvml decodes them
out["names"] = [get_name(h).hex() for h in handles()]
out["serial"] = N.nvmlDeviceGetSerial.__wrapped__(handles()[0]).hex()
""",
        data,
    )
    assert [bytes.fromhex(name) for name in result.out["names"]] == names
    assert bytes.fromhex(result.out["serial"]) == serials[0]
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("name", "gpus"),
    [
        ("idle-1gpu.scn", 1),
        ("unsupported-fields.scn", 2),
        ("lost-gpu.scn", 4),
        ("faults.scn", 3),
        ("hostile.scn", 2),
    ],
)
def test_shipped_scenarios_load(fake_nvml, name, gpus):
    result = run_probe(
        fake_nvml,
        "N.nvmlInit()\nout['count'] = N.nvmlDeviceGetCount()\n",
        scenario=SHIPPED / name,
    )
    assert result.out["count"] == gpus
    assert result.stderr == ""


def test_readme_example_scenario_loads(probe):
    readme = (REPO / "simulator" / "fakenvml" / "README.md").read_text()
    example = readme.split("## Scenario files", 1)[1].split("```", 2)[1]
    assert "xid 48 7" in example and "pcie_link" in example and "mig_mode 1 1" in example
    # Its examples of global faults would fail the init and stall the count.
    faults = ("fail nvmlInitWithFlags", "block nvmlDeviceGetCount_v2")
    loadable = "\n".join(line for line in example.splitlines() if not line.startswith(faults))
    result = probe("N.nvmlInit()\nout['count'] = N.nvmlDeviceGetCount()\n", loadable)
    assert result.out["count"] == 2
    assert result.stderr == ""


def test_shipped_idle_scenario_is_the_builders(fake_nvml):
    def content(data: bytes) -> list[bytes]:
        return [line for line in data.splitlines() if line and not line.startswith(b"#")]

    shipped = (SHIPPED / "idle-1gpu.scn").read_bytes()
    assert content(shipped) == content(fake.render(fake.idle(1)))


def test_shipped_faults_scenario_does_what_it_says(fake_nvml):
    result = run_probe(
        fake_nvml,
        """
N.nvmlInit()
h0, h1, h2 = handles()
out["cuda"] = code(N.nvmlSystemGetCudaDriverVersion)
out["gpu0"] = [
    code(N.nvmlDeviceGetTemperature, h0, 0),
    code(N.nvmlDeviceGetTotalEnergyConsumption, h0),
    N.nvmlDeviceGetPowerUsage(h0),
]
out["gpu1"] = N.nvmlDeviceGetTemperature(h1, 0)
out["gpu2"] = [code(N.nvmlDeviceGetComputeRunningProcesses, h2), N.nvmlDeviceGetTemperature(h2, 0)]
""",
        scenario=SHIPPED / "faults.scn",
    )
    assert result.out == {
        "cuda": NOT_SUPPORTED,
        "gpu0": [UNKNOWN, NO_PERMISSION, 250_000],
        "gpu1": 61,
        "gpu2": [UNKNOWN, 62],
    }


def test_shipped_unsupported_fields_scenario(fake_nvml):
    result = run_probe(
        fake_nvml,
        DEVICE_GETTERS + "N.nvmlInit()\nout['codes'] = [codes(h) for h in handles()]\n",
        scenario=SHIPPED / "unsupported-fields.scn",
    )
    full, consumer = result.out["codes"]
    assert set(full.values()) == {SUCCESS}
    unsupported = {key for key, value in consumer.items() if value == NOT_SUPPORTED}
    assert unsupported == {
        "serial", "limit", "management_limit", "energy", "fan", "ecc_corrected",
        "ecc_uncorrected", "events", "throttle",
    }  # fmt: skip


# ---------------------------------------------------------------- the builder


def test_busy_is_deterministic_and_consistent():
    pids = list(range(1000, 1064))
    scenario = fake.busy(8, pids, seed=5)
    assert scenario == fake.busy(8, pids, seed=5)
    assert scenario != fake.busy(8, pids, seed=6)
    assert [p.pid for p in scenario.gpus[3].processes] == pids[3::8]
    assert len({gpu.uuid for gpu in scenario.gpus}) == 8
    assert len({gpu.pci_bus_id for gpu in scenario.gpus}) == 8
    assert [gpu.minor_number for gpu in scenario.gpus] == list(range(8))
    assert len({gpu.temperature for gpu in scenario.gpus}) > 1
    for gpu in scenario.gpus:
        assert gpu.memory_used >= sum(p.used_bytes for p in gpu.processes)
        assert 0 <= gpu.memory_free < gpu.memory_total
        assert gpu.power_usage <= gpu.power_limit
        assert 0 < gpu.utilization_gpu <= 100
    crowded = fake.busy(1, list(range(1, 2001)))
    assert crowded.gpus[0].memory_free >= 0
    spare = fake.busy(4, [10])
    assert spare.gpus[1].processes == [] and spare.gpus[1].utilization_gpu == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "two\nlines"}, "holds a newline"),
        ({"name": b"nul\0byte"}, "holds a NUL byte"),
        ({"name": " padded"}, "starts or ends with a blank"),
        ({"name": ""}, "is empty"),
        ({"serial": "S" * 30}, "longer than 29 bytes"),
        ({"temperature": -1}, "temperature must be a non-negative integer"),
        ({"fan_speed": 40.5}, "fan_speed must be a non-negative integer"),
        ({"processes": [fake.FakeProcess(1, 2, kind="cpu")]}, "process kind"),
        ({"fail": {"not an entry point": 3}}, "is not an NVML entry point"),
        ({"block": {"nvmlDeviceGetName": -2}}, "needs seconds >= 0"),
        ({"processes": [fake.FakeProcess(1, 2, gpu_instance=1)]}, "needs both gpu_instance"),
        ({"migs": [fake.FakeMig(1, 0, "1g.5gb", "MIG-a", 5)]}, "migs need mig_mode"),
        ({"mig_mode": (1, 2)}, "mig_mode must be two of 0 and 1"),
        ({"mig_mode": (1, 1), "migs": [fake.FakeMig(1, 0, "5gb", "MIG-a", 5)]}, "MIG profile"),
        ({"mig_mode": (1, 1), "migs": [fake.FakeMig(1, 0, "1g.5gb", "MIG a", 5)]}, "MIG uuid"),
        ({"process_utilization": [fake.FakeProcessUtilization(1, -1, 0)]}, "non-negative"),
        ({"retired_pages": {"tbe": 1}}, "retired_pages cause must be sbe or dbe"),
        ({"xids": [fake.FakeXid(-1)]}, "xid must be a non-negative integer"),
        ({"nvlinks": [fake.FakeNvLink(replay=-3)]}, "nvlink must be a non-negative integer"),
        ({"pcie_throughput": (1.5, 2)}, "pcie_throughput must be a non-negative integer"),
    ],
)
def test_render_rejects_what_the_format_cannot_carry(change, message):
    with pytest.raises(ValueError, match=message):
        fake.render(fake.FakeScenario(gpus=[fake.make_gpu(0, **change)]))


def test_scenario_command_line(fake_nvml, tmp_path):
    target = tmp_path / "busy.scn"
    command = [sys.executable, "-m", "simulator.fakenvml.scenario"]
    done = subprocess.run(
        [*command, "busy", "--gpus", "8", "--pids", "1,2,3", "--out", str(target)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == fake.render(fake.busy(8, [1, 2, 3]))
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    served = run_probe(
        fake_nvml, "N.nvmlInit()\nout['count'] = N.nvmlDeviceGetCount()\n", scenario=target
    )
    assert served.out["count"] == 8
    bad = subprocess.run(
        [*command, "busy", "--gpus", "8", "--pids", "1,x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "pids must be integers" in bad.stderr
