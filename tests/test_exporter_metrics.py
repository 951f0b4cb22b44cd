"""/metrics of a real gpu-exporter on the fake NVML library, checked against the scenario."""

from __future__ import annotations

import getpass
import gzip
import shutil
import subprocess
import threading
import time

import pytest

from simulator.exporters import ClientAddresses
from simulator.fakenvml import scenario as fake
from simulator.metrics import label_sets, parse_samples, value, values
from tests.nvml_probes.scenarios import gpm_scenario
from tests.support.encoding import GZIP_NEGOTIATION, check_negotiated, encoding_header

MIB = 1024 * 1024


@pytest.fixture
def busy_8x64(worker_pids):
    pids = worker_pids(64)
    return fake.busy(8, pids), pids


def test_every_gpu_field_matches_the_scenario(exporter_factory, busy_8x64):
    scenario, _ = busy_8x64
    exporter = exporter_factory(scenario)
    text = exporter.metrics()
    assert len(values(text, "gpu_up")) == 8
    for index, gpu in enumerate(scenario.gpus):
        labels = {"gpu": str(index), "uuid": gpu.uuid}
        assert value(text, "gpu_up", **labels) == 1
        assert value(text, "gpu_memory_total_bytes", **labels) == gpu.memory_total
        assert value(text, "gpu_memory_used_bytes", **labels) == gpu.memory_used
        free = gpu.memory_total - gpu.memory_used - (gpu.memory_reserved or 0)
        assert value(text, "gpu_memory_free_bytes", **labels) == free
        assert value(text, "gpu_utilization_ratio", **labels) == pytest.approx(
            gpu.utilization_gpu / 100
        )
        assert value(text, "gpu_memory_utilization_ratio", **labels) == pytest.approx(
            gpu.utilization_memory / 100
        )
        assert value(text, "gpu_temperature_celsius", **labels) == gpu.temperature
        assert value(text, "gpu_power_watts", **labels) == pytest.approx(gpu.power_usage / 1000)
        assert value(text, "gpu_power_limit_watts", **labels) == pytest.approx(
            gpu.power_limit / 1000
        )
        assert value(text, "gpu_energy_joules_total", **labels) == pytest.approx(gpu.energy / 1000)
        assert value(text, "gpu_fan_speed_ratio", **labels) == pytest.approx(gpu.fan_speed / 100)
        assert value(text, "gpu_clock_hertz", clock="sm", **labels) == gpu.clock_sm * 1e6
        assert value(text, "gpu_clock_hertz", clock="memory", **labels) == gpu.clock_mem * 1e6
        assert value(text, "gpu_performance_state", **labels) == gpu.pstate
        assert value(text, "gpu_ecc_errors_total", type="corrected", **labels) == (
            gpu.ecc_corrected
        )
        assert value(text, "gpu_ecc_errors_total", type="uncorrected", **labels) == (
            gpu.ecc_uncorrected
        )
        info = [s for s in label_sets(text, "gpu_info") if s["gpu"] == str(index)]
        assert info == [
            {
                "gpu": str(index),
                "uuid": gpu.uuid,
                "name": gpu.name,
                "pci_bus_id": gpu.pci_bus_id,
                "serial": gpu.serial,
            }
        ]


def test_throttle_reasons_decode_the_bitmask(exporter_factory):
    gpu = fake.make_gpu(0, throttle_reasons=0x4 | 0x40)
    exporter = exporter_factory(fake.FakeScenario(gpus=[gpu]))
    text = exporter.metrics()
    active = {
        labels["reason"]
        for name, labels, sample in parse_samples(text)
        if name == "gpu_throttle_reason" and sample == 1
    }
    assert active == {"sw_power_cap", "hw_thermal_slowdown"}
    assert len(values(text, "gpu_throttle_reason")) == 9


def test_processes_resolve_to_real_users_and_commands(exporter_factory, busy_8x64):
    scenario, pids = busy_8x64
    exporter = exporter_factory(scenario, "--metrics.command-line")
    text = exporter.metrics()
    me = getpass.getuser()
    info = label_sets(text, "gpu_process_info")
    assert sorted(int(labels["pid"]) for labels in info) == sorted(pids)
    assert {labels["user"] for labels in info} == {me}
    assert all(labels["command"] == "sleep 600" for labels in info)
    for index, gpu in enumerate(scenario.gpus):
        for process in gpu.processes:
            assert (
                value(
                    text,
                    "gpu_process_memory_used_bytes",
                    gpu=str(index),
                    pid=str(process.pid),
                    user=me,
                )
                == process.used_bytes
            )


def test_identity_and_self_metrics(exporter_factory):
    exporter = exporter_factory(fake.idle(1), "--hostname", "node-a")
    text = exporter.wait_for_metrics(
        lambda t: "gpu_exporter_collector_success" in t and 'collector="nvml"' in t
    )
    assert label_sets(text, "gpu_node_info") == [{"hostname": "node-a"}]
    (build,) = label_sets(text, "gpu_exporter_build_info")
    assert build["driver_version"] == "550.54.15"
    assert build["cuda_version"] == "12.4"
    assert build["nvml_version"] == "12.550.54.15"
    for collector in ("nvml", "processes", "host"):
        assert value(text, "gpu_exporter_collector_success", collector=collector) == 1
        assert value(text, "gpu_exporter_collector_duration_seconds", collector=collector) >= 0
    age = time.time() - value(text, "gpu_exporter_last_collect_timestamp_seconds")
    assert 0 <= age < 5


def test_no_processes_flag_drops_per_process_series(exporter_factory, worker_pids):
    exporter = exporter_factory(fake.busy(2, worker_pids(4)), "--no-processes")
    text = exporter.metrics()
    assert values(text, "gpu_up") == [1, 1]
    assert not values(text, "gpu_process_info")
    assert not values(text, "gpu_process_memory_used_bytes")
    assert all(gpu["users"] == [] for gpu in exporter.status()["gpus"])


SCRAPE_FORMATS = {
    "text": {"Accept-Encoding": "identity"},
    "gzip": {"Accept-Encoding": "gzip"},
    "openmetrics": {
        "Accept": "application/openmetrics-text; version=1.0.0",
        "Accept-Encoding": "identity",
    },
}


def test_concurrent_scrapes_of_one_snapshot_are_identical(exporter_factory, worker_pids):
    """Scrapers in three formats released together: each gets its own format, byte for byte.

    The renderer caches one body per format and snapshot; a cache written by one scrape while
    another reads it must never hand a scraper the other format or a half-built body.
    """
    exporter = exporter_factory(fake.busy(4, worker_pids(8)), interval=30)  # one snapshot
    rounds, per_format = 3, 6
    start = threading.Barrier(per_format * len(SCRAPE_FORMATS))
    bodies: dict[str, list[bytes]] = {name: [] for name in SCRAPE_FORMATS}
    failures: list[str] = []

    addresses = ClientAddresses()

    def scrape(name: str) -> None:
        # One session per thread (they are not thread-safe), each from its own loopback address
        # like separate Prometheus servers: one address may only have a few requests in flight.
        with addresses.session() as session:
            for _ in range(rounds):
                start.wait(timeout=30)
                response = session.get(
                    f"{exporter.url}/metrics",
                    headers=SCRAPE_FORMATS[name],
                    stream=True,
                    timeout=10,
                )
                if response.status_code != 200:
                    failures.append(f"{name}: HTTP {response.status_code}")
                if response.headers.get("Content-Encoding") != ("gzip" if name == "gzip" else None):
                    failures.append(f"{name}: Content-Encoding {response.headers}")
                bodies[name].append(response.raw.read(decode_content=False))  # bytes as sent

    threads = [
        threading.Thread(target=scrape, args=(name,))
        for name in SCRAPE_FORMATS
        for _ in range(per_format)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert {name: len(got) for name, got in bodies.items()} == {
        name: rounds * per_format for name in SCRAPE_FORMATS
    }
    for name, got in bodies.items():
        assert len(set(got)) == 1, f"{name}: scrapes of one snapshot differ"
    text, zipped, open_metrics = (bodies[name][0] for name in SCRAPE_FORMATS)
    assert gzip.decompress(zipped) == text
    assert not text.endswith(b"# EOF\n") and open_metrics.endswith(b"# EOF\n")
    assert b"gpu_process_info{" in text and b"gpu_up{" in open_metrics


def test_openmetrics_negotiation(exporter_factory):
    exporter = exporter_factory(fake.idle(1))
    response = exporter.session.get(
        f"{exporter.url}/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0"},
        timeout=5,
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "gpu_energy_joules_total" in response.text


def test_gzip_only_when_accepted_and_always_varying(exporter_factory):
    exporter = exporter_factory(fake.idle(1), interval=30)
    for header, gzipped in GZIP_NEGOTIATION:
        response = exporter.session.get(
            f"{exporter.url}/metrics", headers=encoding_header(header), stream=True, timeout=5
        )
        body = check_negotiated(response, gzipped=gzipped, what=f"Accept-Encoding: {header!r}")
        assert b"gpu_up{" in body


@pytest.mark.prometheus
def test_promtool_check_metrics_is_clean_on_8x64(exporter_factory, busy_8x64):
    scenario, _ = busy_8x64
    text = exporter_factory(scenario).metrics()
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/test.sh"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""
    assert len(text.splitlines()) > 8 * 20 + 64 * 2


# ---------------------------------------------------------------- GPM

GPM_RATIOS = {
    # From GPM_FIGURES, percent / 100.
    "gpu_sm_active_ratio": 0.455, "gpu_sm_occupancy_ratio": 0.3025,
    "gpu_tensor_active_ratio": 0.62125, "gpu_dram_active_ratio": 0.125,
    "gpu_fp64_active_ratio": 0.015, "gpu_fp32_active_ratio": 0.2, "gpu_fp16_active_ratio": 0.0,
    "gpu_graphics_active_ratio": 0.915,
}  # fmt: skip


def _has_gpm_figures(text: str) -> bool:
    return bool(values(text, "gpu_sm_active_ratio") and values(text, "gpu_mig_sm_active_ratio"))


def test_gpm_figures_per_gpu_and_gpu_instance(exporter_factory):
    scenario = gpm_scenario()
    exporter = exporter_factory(scenario)
    text = exporter.wait_for_metrics(_has_gpm_figures)
    g0 = {"gpu": "0", "uuid": scenario.gpus[0].uuid}
    for name, expected in GPM_RATIOS.items():
        assert value(text, name, **g0) == expected, name
    # Bytes per second as the scenario gives them: 3 MiB/s, 1.5 MiB/s, 50 GiB/s, 2.5 GiB/s.
    traffic = {
        ("gpu_pcie_traffic_bytes_per_second", "tx"): 3_145_728,
        ("gpu_pcie_traffic_bytes_per_second", "rx"): 1_572_864,
        ("gpu_nvlink_traffic_bytes_per_second", "tx"): 53_687_091_200,
        ("gpu_nvlink_traffic_bytes_per_second", "rx"): 2_684_354_560,
    }
    for (name, direction), expected in traffic.items():
        assert value(text, name, direction=direction, **g0) == expected
    # No GPM (GPU 1), refused (GPU 2), MIG without whole-GPU figures (GPU 3): no series at all.
    for name in [*GPM_RATIOS, "gpu_pcie_traffic_bytes_per_second"]:
        assert {s["gpu"] for s in label_sets(text, name)} == {"0"}, name
    statuses = {
        (s["gpu"], s["status"]): value(text, "gpu_exporter_gpm_status", **s)
        for s in label_sets(text, "gpu_exporter_gpm_status")
    }
    assert {key for key, on in statuses.items() if on == 1} == {
        ("0", "ok"), ("1", "not_supported"), ("2", "refused"), ("3", "ok")
    }  # fmt: skip
    assert len(statuses) == 16
    # GPU 3's GPU instance 1 (its MIG device 0): 20 % SM, 37.5 % DRAM; instance 2 has none.
    mig = {"gpu": "3", "mig_uuid": fake.mig_uuid(3, 0), "gi": "1", "ci": "0"}
    assert value(text, "gpu_mig_sm_active_ratio", **mig) == 0.2
    assert value(text, "gpu_mig_dram_active_ratio", **mig) == 0.375
    assert label_sets(text, "gpu_mig_sm_active_ratio") == [
        {"gpu": "3", "uuid": scenario.gpus[3].uuid, **{k: mig[k] for k in ("mig_uuid", "gi", "ci")}}
    ]
    assert values(text, "gpu_mig_tensor_active_ratio") == []
    assert value(text, "gpu_exporter_collector_success", collector="gpm") == 1
    # A new figure in the file is the figure two passes later.
    exporter.set_scenario(gpm_scenario(gpm_metrics=fake.FakeGpmMetrics(sm_active=80)))
    text = exporter.wait_for_metrics(
        lambda t: (
            values(t, "gpu_sm_active_ratio", gpu="0") == [0.8]
            and values(t, "gpu_tensor_active_ratio") == []
        )
    )


def test_no_collector_gpm_turns_gpm_off(exporter_factory):
    scenario = gpm_scenario()
    # GPM calls would fail: had one been made, a GPU would show a status saying so.
    scenario.fail = {"nvmlGpmQueryDeviceSupport": 999, "nvmlGpmSampleAlloc": 999}
    exporter = exporter_factory(scenario, "--no-collector.gpm")
    text = exporter.wait_for_metrics(lambda t: values(t, "gpu_up") == [1, 1, 1, 1])
    time.sleep(1.5)  # three more passes
    text = exporter.metrics()
    for name in [*GPM_RATIOS, "gpu_exporter_gpm_status", "gpu_mig_sm_active_ratio"]:
        assert values(text, name) == [], name
    assert {s["collector"] for s in label_sets(text, "gpu_exporter_collector_success")} == {
        "nvml", "processes", "host"
    }  # fmt: skip
