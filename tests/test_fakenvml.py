"""The fake NVML library through pynvml's real ctypes calls, and the scenario builder.

pynvml keeps the library it loaded for the life of a process, so every check runs a probe of
tests/nvml_probes in a child process (``python -m tests.nvml_probes NAME``) with
``LD_LIBRARY_PATH`` on the fake library; the probe prints its findings as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from simulator.fakenvml import scenario as fake
from simulator.fakenvml.build import LIBRARY, build
from tests.nvml_probes.scenarios import (
    A100,
    DEVICE_HEALTH_ENTRY_POINTS,
    HEALTH_ENTRY_POINTS,
    NEW_ENTRY_POINTS,
    fault_scenario,
    gpm_scenario,
    mig_scenario,
)

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


@dataclass
class Probe:
    out: dict[str, Any]
    stderr: str


def run_probe(
    library: Path,
    name: str,
    *,
    args: Sequence[Any] = (),
    scenario: Path | None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Probe:
    """Run the probe ``name`` (with JSON ``args``) in a fresh interpreter on the fake library."""
    environment = {k: v for k, v in os.environ.items() if k != "FAKE_NVML_SCENARIO"}
    environment["LD_LIBRARY_PATH"] = str(library)
    if scenario is not None:
        environment["FAKE_NVML_SCENARIO"] = str(scenario)
    environment.update(env or {})
    command = [sys.executable, "-m", "tests.nvml_probes", name]
    if args:
        command.append(json.dumps(list(args)))
    result = subprocess.run(
        command,
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
    """``probe(name, scenario)``: write the scenario (object, text or bytes), then run the probe."""
    path = tmp_path / "scenario.scn"

    def run(
        name: str,
        scenario: fake.FakeScenario | str | bytes | None = None,
        **options: Any,
    ) -> Probe:
        if isinstance(scenario, fake.FakeScenario):
            fake.write(path, scenario)
        elif scenario is not None:
            path.write_bytes(scenario.encode() if isinstance(scenario, str) else scenario)
        return run_probe(fake_nvml, name, scenario=path, **options)

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
    for name in ("nvmlInitWithFlags", "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetCount_v2",
                 "nvmlGpmSampleGet", "nvmlGpmMetricsGet"):  # fmt: skip
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
        "every_field",
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


def test_absent_fields_answer_not_supported(probe):
    text = "[gpu]\n[gpu]\nname only a name\n"  # two GPUs: nothing at all, then just a name
    result = probe(
        "absent_fields",
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
        "first_gpu_codes",
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
        "fail_globally_and_per_gpu",
        scenario,
    )
    assert result.out["temperature"] == [UNKNOWN, SUCCESS]
    assert result.out["power"] == [NO_PERMISSION, SUCCESS]
    assert result.out["fan"] == [17, 17]
    assert result.out["other"] == [SUCCESS, SUCCESS]
    assert result.out["message"] == "Unknown Error"


def test_lost_gpu_answers_gpu_is_lost_to_every_call(probe):
    result = probe(
        "lost_gpu",
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
        "lost_after_the_handle",
        fake.FakeScenario(gpus=gpus),
    )
    assert result.out["before"] == [SUCCESS]
    assert result.out["after"] == [GPU_IS_LOST]
    assert result.out["gpu0"] == gpus[0].temperature


def test_block_delays_that_call_only(probe):
    gpus = [fake.make_gpu(i) for i in range(2)]
    gpus[0].block = {"nvmlDeviceGetPowerUsage": 1.0}
    result = probe(
        "block_one_call",
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
        "global_block",
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
        "reload_after_atomic_replace",
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
        "reload_after_in_place_rewrites",
        text(10),
    )
    assert result.out["seen"] == list(range(10, 41))
    assert result.out["resized"] == [2, 15]
    assert result.out["same_inode"]
    assert result.out["kept_mtime"] == [True, 50]


def test_a_broken_file_keeps_the_last_good_state_and_logs_once(probe, tmp_path):
    result = probe(
        "broken_file_keeps_the_last_good_state",
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
    unset = run_probe(fake_nvml, "init_and_count_codes", scenario=None)
    assert unset.out == {"init": DRIVER_NOT_LOADED, "count": UNINITIALIZED}
    assert "FAKE_NVML_SCENARIO is not set" in unset.stderr
    missing = run_probe(fake_nvml, "init_and_count_codes", scenario=tmp_path / "nothing-here.scn")
    assert missing.out == {"init": DRIVER_NOT_LOADED, "count": UNINITIALIZED}
    assert "nothing-here.scn" in missing.stderr and "No such file" in missing.stderr


def test_init_on_a_broken_file_is_unknown_and_names_the_line(probe, tmp_path):
    result = probe("init_code", "driver_version 1\n\n[gpu]\ntemperature hot\n")
    assert result.out["init"] == UNKNOWN
    assert f"{tmp_path / 'scenario.scn'}:4: temperature needs an integer" in result.stderr


def test_injected_init_failure_then_recovery(probe):
    broken = replace(fake.idle(1), fail={"nvmlInitWithFlags": DRIVER_NOT_LOADED})
    result = probe(
        "init_failure_then_recovery",
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
        "init_and_shutdown_counts",
        fake.idle(2),
    )
    assert result.out["init_v2"] == SUCCESS
    assert result.out["steps"] == [[SUCCESS, SUCCESS], [SUCCESS, SUCCESS], [SUCCESS, UNINITIALIZED]]
    assert result.out["last"] == [UNINITIALIZED, UNINITIALIZED]
    assert result.out["again"] == [SUCCESS, 2]


def test_error_strings_read_like_the_real_library(probe):
    result = probe(
        "error_strings",
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
        "process_lists",
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
        "many_processes",
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
        "process_utilization",
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
        "process_utilization_restamped",
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


def test_mig_handles_ids_and_identity(probe):
    scenario = mig_scenario()
    result = probe(
        "mig_identity",
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
        "mig_processes",
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
        "mig_handles_across_reloads",
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


def test_fail_and_block_on_the_new_entry_points(probe):
    result = probe(
        "fail_and_block_new_entry_points",
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
        "concurrent_calls_while_the_file_changes",
        fake.idle(2),
    )
    assert result.out["errors"] == []
    assert set(result.out["seen"]) <= {50, 51, 52, fake.idle(2).gpus[0].temperature, 32}
    assert result.out["final"] == [77, 77]


def test_memory_does_not_grow_across_reloads(probe):
    result = probe(
        "memory_across_reloads",
        fake.idle(1),
    )
    assert result.out["count"] == 64
    # A leaked state would be about 150 KiB per reload, 60 MiB over 400 reloads.
    assert result.out["growth"] < 4 * 1024 * 1024, result.out


# ---------------------------------------------------------------- GPU health


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
        "health_values",
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
        "retired_pages_size_query",
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
        "field_values",
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


def _xids(*codes_and_ids: tuple[int, int | None]) -> list[fake.FakeXid]:
    return [fake.FakeXid(code, id=given) for code, given in codes_and_ids]


def test_xid_events_are_delivered_once_across_reloads(probe):
    gpus = [
        fake.make_gpu(0, xids=_xids((79, None), (48, None))),
        fake.make_gpu(1, xids=_xids((13, 5))),
        fake.make_gpu(2, xids=_xids((31, None))),  # never registered
    ]
    result = probe(
        "xid_events_once",
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
        "event_registration",
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
        "xid_mid_wait",
        fake.idle(2),
    )
    assert result.out["event"] == [1, 8, 79, 0xFFFFFFFF, 0xFFFFFFFF]
    # The wait polls the file every 20 ms; well within a reader's 1 s timeout.
    assert result.out["latency"] is not None and result.out["latency"] < 1.0, result.out
    assert all(seconds < 0.5 for _, seconds in result.out["reads"]), result.out["reads"]
    assert result.out["after"] == [TIMEOUT]


def test_wait_without_events_times_out(probe):
    result = probe(
        "wait_times_out",
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
        "lost_gpu_xids",
        fake.idle(2),
    )
    assert result.out["event"] == [79, GPU_IS_LOST]  # the handle is the lost GPU's
    assert result.out["then"] == [TIMEOUT]
    assert result.out["health"] == [GPU_IS_LOST, GPU_IS_LOST]


def test_fail_and_block_on_every_health_entry_point(probe):
    gpu = _health_gpu(0, remapped_rows=None, retired_pages={"sbe": 1})
    result = probe(
        "fail_and_block_health_entry_points",
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


# ---------------------------------------------------------------- GPU Performance Monitoring

MIB = float(fake.MIB)


def test_gpm_support_samples_and_metrics_through_pynvml(probe):
    out = probe("gpm_support_and_metrics", gpm_scenario()).out
    # GPU 0 has GPM; GPU 1 (an A100) not; GPU 2 has it though another client holds it; GPU 3
    # in MIG mode and its MIG device have it.
    assert out["support"] == [1, 0, 1, 1, 1]
    assert out["support_raw"] == [[ARGUMENT_VERSION_MISMATCH, 0], [INVALID_ARGUMENT, 0]]
    # Percentages as NVML gives them (0-100), traffic in MiB/s: 3 MiB/s, 1.5 MiB/s, 50 GiB/s
    # = 51200 MiB/s, 2.5 GiB/s = 2560 MiB/s.
    percent, mib = ["%"], ["MiB/sec"]
    assert out["metrics"] == [
        [91.5, SUCCESS, "gr_util", *percent], [45.5, SUCCESS, "sm_util", *percent],
        [30.25, SUCCESS, "sm_occupancy", *percent], [7.0, SUCCESS, "int_util", *percent],
        [62.125, SUCCESS, "any_tensor_util", *percent],
        [12.5, SUCCESS, "dram_bw_util", *percent], [1.5, SUCCESS, "fp64_util", *percent],
        [20.0, SUCCESS, "fp32_util", *percent], [0.0, SUCCESS, "fp16_util", *percent],
        [3.0, SUCCESS, "pcie_tx", *mib], [1.5, SUCCESS, "pcie_rx", *mib],
        [51200.0, SUCCESS, "nvlink_total_tx", *mib], [2560.0, SUCCESS, "nvlink_total_rx", *mib],
        [0.0, NOT_SUPPORTED, None, None],  # NVDEC 0: GPM has it, the file does not give it
        [0.0, INVALID_ARGUMENT, None, None],  # 0 and NVML_GPM_METRIC_MAX: no such metric
        [0.0, INVALID_ARGUMENT, None, None],
    ]  # fmt: skip
    invalid = {"error": INVALID_ARGUMENT}
    assert out["swapped"] == out["unfilled"] == out["two_scopes"] == invalid
    assert out["no_metrics"] == []
    assert (out["bad_version"], out["too_many"]) == (ARGUMENT_VERSION_MISMATCH, INVALID_ARGUMENT)
    assert out["refused"] == [NOT_SUPPORTED, NOT_SUPPORTED]
    unsupported = [0.0, NOT_SUPPORTED, None, None]
    instance_one = [
        unsupported, [20.0, SUCCESS, "sm_util", "%"], unsupported, unsupported, unsupported,
        [37.5, SUCCESS, "dram_bw_util", "%"],
    ]  # fmt: skip
    assert out["mig"] == [instance_one, instance_one, [unsupported] * 6, [unsupported] * 6]
    assert out["mig_errors"] == [NOT_FOUND, NOT_SUPPORTED, NOT_SUPPORTED]
    assert out["freed"] == [INVALID_ARGUMENT, invalid] + [INVALID_ARGUMENT] * 3
    assert out["after_shutdown"] == [UNINITIALIZED, UNINITIALIZED]


def test_gpm_figures_follow_the_file_and_faults(probe):
    out = probe("gpm_figures_follow_the_file", gpm_scenario()).out
    assert out["steady"] == 45.5 and out["changed"] == 80.0
    # 0.1 s at 45.5 and then 0.1 s at 80 (each at least, and the sleeps are alike): a mean
    # strictly between, near the middle.
    assert 45.5 < out["across"] < 80 and abs(out["across"] - 62.75) < 8
    assert out["refused"] == NOT_SUPPORTED
    assert out["lost"] == [GPU_IS_LOST, {"error": GPU_IS_LOST}]
    assert out["failing"] == [UNKNOWN, NOT_SUPPORTED, NOT_SUPPORTED, SUCCESS]
    assert out["global_fail"] == 17
    assert 0.4 <= out["blocked_seconds"] < 2.0


@pytest.mark.parametrize("leaked", [0, 2])
def test_gpm_samples_left_at_the_last_shutdown_are_reported(probe, leaked):
    result = probe("gpm_leak_reported_at_shutdown", gpm_scenario(), args=[leaked])
    before, _, after = result.stderr.partition("between the two shutdowns")
    assert "never freed" not in before
    message = f"nvmlShutdown: {leaked} GPM samples were never freed"
    assert (message in after) == bool(leaked), result.stderr


def test_gpm_builder_renders_fixed_point_percentages():
    gpu = fake.make_mig_gpu(
        0,
        profiles=("3g.40gb",),
        gpm="supported",
        gpm_metrics=fake.FakeGpmMetrics(sm_active=45.5, fp16_active=12.125, pcie_tx=3 * fake.MIB),
        gpm_mig_metrics={1: fake.FakeGpmMetrics(tensor_active=20)},
    )
    lines = fake.render(fake.FakeScenario(gpus=[gpu])).decode().splitlines()
    assert lines[-5:] == [
        "gpm supported",
        "gpm_metric sm_active 45.500",
        "gpm_metric fp16_active 12.125",
        "gpm_metric pcie_tx 3145728",
        "gpm_mig_metric 1 tensor_active 20",
    ]


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
    ("gpm supported\n", 1, "'gpm' belongs in a [gpu] section"),
    ("[gpu]\ngpm yes\n", 2, "gpm must be supported, unsupported or refused, got 'yes'"),
    ("[gpu]\ngpm supported\ngpm refused\n", 3, "duplicate key 'gpm'"),
    ("[gpu]\ngpm_metric sm_active 5\n", 2, "gpm_metric needs a 'gpm' line above it"),
    ("[gpu]\ngpm supported\ngpm_metric warp 5\n", 3, "gpm_metric: unknown metric 'warp'"),
    ("[gpu]\ngpm supported\ngpm_metric sm_active 100.5\n", 3, "percentage from 0 to 100"),
    ("[gpu]\ngpm supported\ngpm_metric sm_active 1.2345\n", 3, "at most three decimals"),
    ("[gpu]\ngpm supported\ngpm_metric sm_active 5.\n", 3, "percentage from 0 to 100"),
    ("[gpu]\ngpm supported\ngpm_metric pcie_tx 1.5\n", 3, "pcie_tx needs bytes per second"),
    (
        "[gpu]\ngpm supported\ngpm_metric nvlink_rx 281474976710657\n",
        3,
        "nvlink_rx needs bytes per second, at most 2^48",
    ),
    (
        "[gpu]\ngpm supported\ngpm_metric fp16_active 1\ngpm_metric fp16_active 2\n",
        4,
        "a second gpm_metric fp16_active for this GPU",
    ),
    (
        "[gpu]\nmig_mode 1 1\nmig 1 0 1g.10gb MIG-a 10 0\ngpm supported\n"
        "gpm_mig_metric 2 sm_active 5\n",
        5,
        "no mig line above declares GPU instance 2",
    ),
    ("[gpu]\ngpm supported\ngpm_metric dram_active 5 6\n", 3, "unexpected text after"),
]


def test_bad_files_are_rejected_with_file_and_line(probe, tmp_path):
    result = probe("bad_files", fake.idle(1), args=[[text for text, _, _ in BAD_FILES]])
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
        "format_details",
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
        "raw_names",
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
        "count",
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
    result = probe("count", loadable)
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
        "shipped_faults",
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
        "every_gpu_codes",
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
        ({"gpm": "maybe"}, "gpm must be one of supported, unsupported, refused"),
        ({"gpm_metrics": fake.FakeGpmMetrics(sm_active=5)}, "need gpm set"),
        ({"gpm": "supported", "gpm_metrics": fake.FakeGpmMetrics(sm_active=5.0001)}, "three"),
        ({"gpm": "supported", "gpm_metrics": fake.FakeGpmMetrics(fp32_active=101)}, "0 to 100"),
        ({"gpm": "supported", "gpm_metrics": fake.FakeGpmMetrics(pcie_tx=2**49)}, "2\\*\\*48"),
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
    served = run_probe(fake_nvml, "count", scenario=target)
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
