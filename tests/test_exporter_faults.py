"""Faults through the real exporter process: lost GPUs, unsupported fields, NVML errors and hangs.

After each fault the exporter must answer every scrape within a second and report the truth.
"""

from __future__ import annotations

import dataclasses
import time

import requests

from simulator.fakenvml import scenario as fake
from simulator.metrics import label_sets, value, values
from tests.nvml_probes.scenarios import gpm_scenario

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_UNKNOWN = 999


def timed_scrape(exporter) -> tuple[str, float]:
    started = time.monotonic()
    response = requests.get(f"{exporter.url}/metrics", timeout=5)
    response.raise_for_status()
    return response.text, time.monotonic() - started


def test_lost_gpu_is_down_and_the_others_keep_reporting(exporter_factory):
    gpus = [fake.make_gpu(i) for i in range(4)]
    gpus[2] = dataclasses.replace(gpus[2], lost=True)
    exporter = exporter_factory(fake.FakeScenario(gpus=gpus))
    text = exporter.metrics()
    assert [value(text, "gpu_up", gpu=str(i)) for i in range(4)] == [1, 1, 0, 1]
    assert values(text, "gpu_temperature_celsius", gpu="2") == []
    assert len(values(text, "gpu_temperature_celsius")) == 3
    assert [g["index"] for g in exporter.status()["gpus"]] == [0, 1, 2, 3]


def test_gpu_lost_mid_run_keeps_its_uuid_and_comes_back(exporter_factory):
    gpus = [fake.make_gpu(i) for i in range(2)]
    exporter = exporter_factory(fake.FakeScenario(gpus=gpus))
    uuid = gpus[1].uuid
    assert value(exporter.metrics(), "gpu_up", gpu="1", uuid=uuid) == 1
    exporter.set_scenario(
        fake.FakeScenario(gpus=[gpus[0], dataclasses.replace(gpus[1], lost=True)])
    )
    text = exporter.wait_for_metrics(lambda t: values(t, "gpu_up", gpu="1") == [0])
    assert value(text, "gpu_up", gpu="1", uuid=uuid) == 0  # same series, not a new one
    assert value(text, "gpu_up", gpu="0") == 1
    exporter.set_scenario(fake.FakeScenario(gpus=gpus))
    exporter.wait_for_metrics(lambda t: values(t, "gpu_up", gpu="1", uuid=uuid) == [1])


def test_unsupported_fields_are_absent_for_that_gpu_only(exporter_factory):
    consumer = dataclasses.replace(
        fake.make_gpu(1),
        ecc_corrected=None,
        ecc_uncorrected=None,
        energy=None,
        fan_speed=None,
        serial=None,
        power_limit=None,
    )
    exporter = exporter_factory(fake.FakeScenario(gpus=[fake.make_gpu(0), consumer]))
    text = exporter.metrics()
    for name in (
        "gpu_ecc_errors_total",
        "gpu_energy_joules_total",
        "gpu_fan_speed_ratio",
        "gpu_power_limit_watts",
    ):
        assert values(text, name, gpu="1") == [], name
        assert values(text, name, gpu="0"), name
    assert value(text, "gpu_up", gpu="1") == 1
    assert value(text, "gpu_temperature_celsius", gpu="1") == consumer.temperature
    info = [labels for labels in label_sets(text, "gpu_info") if labels["gpu"] == "1"]
    assert info[0]["serial"] == ""
    assert value(text, "gpu_exporter_collector_success", collector="nvml") == 1


def test_an_unknown_performance_state_is_left_out(exporter_factory):
    unknown = fake.make_gpu(0, pstate=fake.PSTATE_UNKNOWN)
    exporter = exporter_factory(fake.FakeScenario(gpus=[unknown, fake.make_gpu(1, pstate=8)]))
    text = exporter.metrics()
    assert values(text, "gpu_performance_state", gpu="0") == []
    assert value(text, "gpu_performance_state", gpu="1") == 8
    assert value(text, "gpu_up", gpu="0") == 1


def test_an_erroring_field_is_left_out_alone(exporter_factory):
    gpu = dataclasses.replace(
        fake.make_gpu(0), fail={"nvmlDeviceGetTemperature": NVML_ERROR_UNKNOWN}
    )
    exporter = exporter_factory(fake.FakeScenario(gpus=[gpu, fake.make_gpu(1)]))
    text = exporter.metrics()
    assert values(text, "gpu_temperature_celsius", gpu="0") == []
    assert values(text, "gpu_temperature_celsius", gpu="1") == [fake.make_gpu(1).temperature]
    assert value(text, "gpu_power_watts", gpu="0") == gpu.power_usage / 1000


def test_nvml_init_failing_at_start_recovers_without_restart(exporter_factory):
    healthy = fake.idle(2)
    broken = dataclasses.replace(healthy, fail={"nvmlInitWithFlags": NVML_ERROR_DRIVER_NOT_LOADED})
    exporter = exporter_factory(broken, "--hostname", "node-x")
    text = exporter.metrics()
    assert values(text, "gpu_up") == []
    assert value(text, "gpu_exporter_collector_success", collector="nvml") == 0
    assert label_sets(text, "gpu_node_info") == [{"hostname": "node-x"}]
    assert exporter.status()["gpus"] == []
    exporter.set_scenario(healthy)
    # Backoff starts at 1 s and doubles; the first retries come within a few seconds.
    text = exporter.wait_for_metrics(lambda t: len(values(t, "gpu_up")) == 2, timeout=15)
    assert value(text, "gpu_exporter_collector_success", collector="nvml") == 1
    assert exporter.log().count("NVML unavailable") == 1


def test_no_nvml_library_at_all(exporter_factory, tmp_path):
    empty = tmp_path / "no-driver"
    empty.mkdir()
    exporter = exporter_factory(fake.idle(1), env={"LD_LIBRARY_PATH": str(empty)})
    text = exporter.metrics()
    assert values(text, "gpu_up") == []
    assert value(text, "gpu_exporter_collector_success", collector="nvml") == 0
    assert value(text, "gpu_exporter_collector_success", collector="host") == 1
    status = exporter.status()
    assert status["gpus"] == [] and status["hostname"]
    time.sleep(2)
    assert exporter.log().count("NVML unavailable") == 1, exporter.log()


def test_errors_for_a_while_then_recovery(exporter_factory):
    healthy = fake.idle(2)
    exporter = exporter_factory(healthy)
    failing = dataclasses.replace(healthy, fail={"nvmlDeviceGetCount_v2": NVML_ERROR_UNKNOWN})
    exporter.set_scenario(failing)
    text = exporter.wait_for_metrics(
        lambda t: values(t, "gpu_exporter_collector_success", collector="nvml") == [0]
    )
    _, elapsed = timed_scrape(exporter)
    assert elapsed < 1
    exporter.set_scenario(healthy)
    text = exporter.wait_for_metrics(
        lambda t: (
            values(t, "gpu_exporter_collector_success", collector="nvml") == [1]
            and len(values(t, "gpu_up")) == 2
        ),
        timeout=20,
    )
    assert values(text, "gpu_up") == [1, 1]


def test_a_hanging_gpu_does_not_hang_scrapes_or_other_gpus(exporter_factory):
    gpus = [fake.make_gpu(i) for i in range(3)]
    exporter = exporter_factory(fake.FakeScenario(gpus=gpus), "--nvml-timeout", "1")
    stuck = dataclasses.replace(gpus[1], block={"nvmlDeviceGetPowerUsage": 30.0})
    hot = dataclasses.replace(gpus[0], temperature=91)
    exporter.set_scenario(fake.FakeScenario(gpus=[hot, stuck, gpus[2]]))
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        _, elapsed = timed_scrape(exporter)
        assert elapsed < 1
        time.sleep(0.2)
    text = exporter.metrics()
    assert value(text, "gpu_up", gpu="1", uuid=gpus[1].uuid) == 0
    assert value(text, "gpu_temperature_celsius", gpu="0") == 91  # fresh despite the hang
    assert value(text, "gpu_up", gpu="2") == 1


def test_a_hanging_global_call_shows_as_staleness(exporter_factory):
    exporter = exporter_factory(fake.idle(1))
    exporter.set_scenario(dataclasses.replace(fake.idle(1), block={"nvmlDeviceGetCount_v2": 30.0}))
    time.sleep(1.5)
    first, elapsed = timed_scrape(exporter)
    assert elapsed < 1
    time.sleep(2)
    second, elapsed = timed_scrape(exporter)
    assert elapsed < 1
    stamp = value(second, "gpu_exporter_last_collect_timestamp_seconds")
    assert stamp == value(first, "gpu_exporter_last_collect_timestamp_seconds")
    assert time.time() - stamp > 2
    assert requests.get(f"{exporter.url}/-/healthy", timeout=1).status_code == 200


def test_processes_gone_between_listing_and_lookup(exporter_factory, worker_pids):
    alive = worker_pids(1)[0]
    gone = 4_000_000  # above pid_max: no such process
    gpu = dataclasses.replace(
        fake.make_gpu(0),
        processes=[fake.FakeProcess(alive, 512 * 2**20), fake.FakeProcess(gone, 256 * 2**20)],
        memory_used=768 * 2**20,
    )
    exporter = exporter_factory(fake.FakeScenario(gpus=[gpu]), "--metrics.command-line")
    text = exporter.metrics()
    assert value(text, "gpu_process_memory_used_bytes", pid=str(gone)) == 256 * 2**20
    assert value(text, "gpu_process_memory_used_bytes", pid=str(alive)) == 512 * 2**20
    (gone_info,) = [i for i in label_sets(text, "gpu_process_info") if i["pid"] == str(gone)]
    assert gone_info["user"] == "" and gone_info["command"] == ""
    users = exporter.status()["gpus"][0]["users"]
    assert {u["pid"]: u["username"] for u in users}[gone] == ""


def test_processes_coming_and_going(exporter_factory, worker_pids):
    pids = worker_pids(6)
    exporter = exporter_factory(fake.busy(2, pids[:3]))
    assert len(label_sets(exporter.metrics(), "gpu_process_info")) == 3
    exporter.set_scenario(fake.busy(2, pids[3:]))
    text = exporter.wait_for_metrics(
        lambda t: {int(i["pid"]) for i in label_sets(t, "gpu_process_info")} == set(pids[3:])
    )
    assert len(values(text, "gpu_process_memory_used_bytes")) == 3


def test_hostile_names_and_commands_are_escaped(exporter_factory, tmp_path):
    name = b'Evil "GPU" \\ <script>alert(1)</script> \xff\xfe end'
    gpu = dataclasses.replace(fake.make_gpu(0), name=name)
    exporter = exporter_factory(fake.FakeScenario(gpus=[gpu]))
    text = exporter.metrics()
    (info,) = label_sets(text, "gpu_info")
    assert info["name"].startswith('Evil "GPU" \\ <script>')
    assert "\ufffd" in info["name"]
    status = exporter.status()
    assert status["gpus"][0]["name"] == info["name"]


def test_a_process_with_compute_and_graphics_contexts_is_one_series(exporter_factory, worker_pids):
    pid = worker_pids(1)[0]
    gpu = dataclasses.replace(
        fake.make_gpu(0),
        processes=[
            fake.FakeProcess(pid, 300 * 2**20, kind="compute"),
            fake.FakeProcess(pid, 300 * 2**20, kind="graphics"),
        ],
        memory_used=300 * 2**20,
    )
    exporter = exporter_factory(fake.FakeScenario(gpus=[gpu]))
    text = exporter.metrics()
    assert values(text, "gpu_process_memory_used_bytes", pid=str(pid)) == [300 * 2**20]
    assert len(label_sets(text, "gpu_process_info")) == 1
    assert [u["pid"] for u in exporter.status()["gpus"][0]["users"]] == [pid]


def test_a_hung_gpu_does_not_age_the_snapshot_and_is_logged_once(exporter_factory):
    interval, block = 1.0, 15.0
    gpus = [fake.make_gpu(i) for i in range(2)]
    exporter = exporter_factory(
        fake.FakeScenario(gpus=gpus), "--nvml-timeout", "5", interval=interval
    )
    stuck = dataclasses.replace(gpus[1], block={"nvmlDeviceGetPowerUsage": block})
    exporter.set_scenario(fake.FakeScenario(gpus=[gpus[0], stuck]))
    blocked_at = time.monotonic()
    ages, up = [], []
    changed_at = followed_at = None
    while time.monotonic() - blocked_at < block + 6 * interval:
        text, _ = timed_scrape(exporter)
        now = time.monotonic()
        ages.append(time.time() - value(text, "gpu_exporter_last_collect_timestamp_seconds"))
        up.append(value(text, "gpu_up", gpu="1", uuid=gpus[1].uuid))
        if changed_at is None and now - blocked_at > 4:
            # Also lifts the block for later calls: the call in flight still sleeps it out.
            changed_at = now
            hot = dataclasses.replace(gpus[0], temperature=91)
            exporter.set_scenario(fake.FakeScenario(gpus=[hot, gpus[1]]))
        if changed_at and not followed_at and value(text, "gpu_temperature_celsius", gpu="0") == 91:
            followed_at = now
        time.sleep(0.2)
    assert max(ages) < 2.5 * interval, ages
    assert followed_at is not None and followed_at - changed_at < 4 * interval
    assert 0 in up and up[-1] == 1, up  # down while hung, up again once the call returned
    log = exporter.log()
    assert log.count("GPU 1: NVML hang started") == 1, log
    assert log.count("GPU 1: NVML hang ended") == 1, log
    assert "GPU 0: NVML hang" not in log


# ---------------------------------------------------------------- GPM


def _gpm_ok(text: str) -> bool:
    return values(text, "gpu_sm_active_ratio", gpu="0") == [0.455] and bool(
        values(text, "gpu_mig_sm_active_ratio", gpu="3")
    )


def test_one_gpus_gpm_failure_costs_only_its_gpm_figures(exporter_factory):
    healthy = gpm_scenario()
    exporter = exporter_factory(healthy)
    exporter.wait_for_metrics(_gpm_ok)
    exporter.set_scenario(gpm_scenario(fail={"nvmlGpmSampleGet": NVML_ERROR_UNKNOWN}))
    text = exporter.wait_for_metrics(
        lambda t: values(t, "gpu_exporter_gpm_status", gpu="0", status="error") == [1]
    )
    assert values(text, "gpu_sm_active_ratio") == []  # absent, not 0 nor a stale figure
    assert value(text, "gpu_exporter_collector_success", collector="gpm") == 0
    assert value(text, "gpu_exporter_collector_success", collector="nvml") == 1
    assert value(text, "gpu_temperature_celsius", gpu="0") == healthy.gpus[0].temperature
    assert values(text, "gpu_mig_sm_active_ratio", gpu="3") == [0.2]  # another GPU: unaffected
    exporter.set_scenario(healthy)
    text = exporter.wait_for_metrics(_gpm_ok)
    assert value(text, "gpu_exporter_collector_success", collector="gpm") == 1
    log = exporter.log()
    assert log.count("GPU 0: no GPM figures: GPM failed") == 1, log
    assert log.count("GPU 0: GPM figures available again") == 1, log
    assert log.count("GPU 1: no GPM figures: the GPU has no GPM") == 1, log


def test_gpm_starts_over_after_nvml_reinit_and_frees_every_buffer(exporter_factory):
    healthy = gpm_scenario()
    exporter = exporter_factory(healthy)
    exporter.wait_for_metrics(_gpm_ok)
    failing = dataclasses.replace(healthy, fail={"nvmlDeviceGetCount_v2": NVML_ERROR_UNKNOWN})
    exporter.set_scenario(failing)
    exporter.wait_for_metrics(
        lambda t: values(t, "gpu_exporter_collector_success", collector="nvml") == [0]
    )
    exporter.set_scenario(healthy)
    exporter.wait_for_metrics(_gpm_ok, timeout=20)
    exporter.stop()
    log = exporter.log()
    # The fake library reports buffers still allocated at its last nvmlShutdown: the re-init's
    # shutdown and the one at exit both found none.
    assert "NVML session lost" in log or "device count failed" in log, log
    assert "never freed" not in log, log
