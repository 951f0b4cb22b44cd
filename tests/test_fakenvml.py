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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.fakenvml import scenario as fake
from tests.fakenvml.build import LIBRARY, build

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "tests" / "scenarios"

SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
INSUFFICIENT_SIZE = 7
DRIVER_NOT_LOADED = 9
GPU_IS_LOST = 15
ARGUMENT_VERSION_MISMATCH = 25
UNKNOWN = 999

PRELUDE = r'''
import ctypes, json, os, sys, threading, time
from dataclasses import replace
from pathlib import Path
import pynvml as N
from tests.fakenvml import scenario as fake

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
    command = [sys.executable, *python_flags, "-m", "tests.fakenvml.build"]
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
    ],
)
def test_render_rejects_what_the_format_cannot_carry(change, message):
    with pytest.raises(ValueError, match=message):
        fake.render(fake.FakeScenario(gpus=[fake.make_gpu(0, **change)]))


def test_scenario_command_line(fake_nvml, tmp_path):
    target = tmp_path / "busy.scn"
    command = [sys.executable, "-m", "tests.fakenvml.scenario"]
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
