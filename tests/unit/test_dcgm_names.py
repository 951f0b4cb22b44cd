"""dcgm-exporter's names, units and labels (``--metrics.dcgm-names``) for hand-built snapshots."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import render
from exporter.dcgm_names import FIELDS
from exporter.snapshot import GpmFigures, MigSample, PodContainer, Snapshot, XidSample
from tests.unit.builders import GIB, MIB, down_gpu, gpu, snapshot

pytestmark = pytest.mark.unit

Series = dict[frozenset[tuple[str, str]], float]


def scrape(snap: Snapshot) -> dict[str, Series]:
    """Every DCGM sample, name -> {labels: value}, read from OpenMetrics: prometheus_client's
    text parser would name a counter's samples ``_total``, which Prometheus does not."""
    body = render(snap, dcgm_names=True, openmetrics=True).decode()
    found: dict[str, Series] = {}
    for family in parse_openmetrics(body):
        for sample in family.samples:
            if sample.name.startswith("DCGM_"):
                found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found


def one(series: dict[str, Series], name: str) -> tuple[dict[str, str], float]:
    """The labels and value of the only sample of ``name``."""
    ((labels, value),) = series[name].items()
    return dict(labels), value


GPU0_LABELS = {
    "gpu": "0",
    "UUID": "GPU-00000000-aaaa",
    "pci_bus_id": "00000000:07:00.0",
    "device": "nvidia0",
    "modelName": "NVIDIA A100-SXM4-80GB",
    "Hostname": "gpu-a",
    "DCGM_FI_DRIVER_VERSION": "550.54.15",
}


def test_off_by_default_and_on_beside_the_projects_names() -> None:
    plain = render(snapshot(gpu(0))).decode()
    assert "\nDCGM_" not in plain and "# TYPE DCGM_" not in plain
    named = render(snapshot(gpu(0)), dcgm_names=True).decode()
    assert named.startswith(plain)  # the project's families unchanged, DCGM's after them
    assert "\nDCGM_FI_DEV_GPU_TEMP{" in named
    # the text format reads back too, whatever its parser makes of a counter's name
    assert "DCGM_FI_DEV_GPU_TEMP" in {f.name for f in text_string_to_metric_families(named)}


def test_readings_in_dcgm_units_with_dcgm_labels() -> None:
    series = scrape(snapshot(gpu(0)))
    labels, used = one(series, "DCGM_FI_DEV_FB_USED")
    assert labels == GPU0_LABELS
    assert used == 1000  # 1000 MiB in use
    assert one(series, "DCGM_FI_DEV_FB_FREE")[1] == 80 * 1024 - 1000
    assert one(series, "DCGM_FI_DEV_GPU_UTIL")[1] == 25  # ratio 0.25
    assert one(series, "DCGM_FI_DEV_MEM_COPY_UTIL")[1] == 12.5  # ratio 0.125
    assert one(series, "DCGM_FI_DEV_SM_CLOCK")[1] == 1410  # 1410e6 Hz
    assert one(series, "DCGM_FI_DEV_MEM_CLOCK")[1] == 1593
    assert one(series, "DCGM_FI_DEV_GPU_TEMP")[1] == 40
    assert one(series, "DCGM_FI_DEV_POWER_USAGE")[1] == 300.5
    assert one(series, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")[1] == 123_456_500  # 123456.5 J


def test_integer_percentages_and_millijoules_stay_exact() -> None:
    # 0.57 * 100 and 0.001 J * 1000 are not integers in floating point; DCGM's values are
    series = scrape(snapshot(gpu(0, utilization_ratio=0.57, energy_joules=123_456_789 * 1e-3)))
    assert one(series, "DCGM_FI_DEV_GPU_UTIL")[1] == 57
    assert one(series, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")[1] == 123_456_789


def test_types_follow_dcgm_exporter_in_both_formats() -> None:
    snap = snapshot(gpu(0, pcie_replay_errors=4))
    text = render(snap, dcgm_names=True).decode()
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in text
    assert "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n" in text
    # no _total: dashboards query dcgm-exporter's exact names
    assert "\nDCGM_FI_DEV_PCIE_REPLAY_COUNTER{" in text
    assert "_total{gpu=" not in text.split("DCGM_", 1)[1]
    body = render(snap, dcgm_names=True, openmetrics=True).decode()
    parsed = {f.name: f for f in parse_openmetrics(body)}
    energy = parsed["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]
    assert (energy.type, energy.samples[0].name) == ("unknown", energy.name)
    assert parsed["DCGM_FI_DEV_GPU_TEMP"].type == "gauge"


def test_a_reading_the_gpu_lacks_has_no_series() -> None:
    series = scrape(snapshot(gpu(0, utilization_ratio=None, temperature_celsius=None)))
    assert "DCGM_FI_DEV_GPU_UTIL" not in series
    assert "DCGM_FI_DEV_GPU_TEMP" not in series
    # nor what the builder's GPU does not report: health readings, GPM, XIDs
    for name in ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "DCGM_FI_DEV_ROW_REMAP_FAILURE",
                 "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_PROF_SM_ACTIVE"):  # fmt: skip
        assert name not in series
    # a lost GPU has no readings at all
    assert scrape(snapshot(down_gpu(0))) == {}


def test_health_counters_and_the_last_xid() -> None:
    health = gpu(
        0,
        pcie_replay_errors=4,
        remapped_rows_corrected=2,
        remapped_rows_uncorrected=1,
        remapped_rows_failure=False,
        xid=XidSample(counts=((48, 1), (79, 2)), last_xid=79, last_timestamp_seconds=1.0),
    )
    quiet = gpu(1, xid=XidSample())  # registered, no XID since the exporter started
    series = scrape(snapshot(health, quiet))
    assert one(series, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER")[1] == 4
    assert one(series, "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS")[1] == 2
    assert one(series, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS")[1] == 1
    assert one(series, "DCGM_FI_DEV_ROW_REMAP_FAILURE")[1] == 0
    xids = {
        dict(labels)["gpu"]: value for labels, value in series["DCGM_FI_DEV_XID_ERRORS"].items()
    }
    assert xids == {"0": 79, "1": 0}


FIGURES = GpmFigures(
    sm_active_ratio=0.715,
    sm_occupancy_ratio=0.3825,
    tensor_active_ratio=0.44,
    dram_active_ratio=0.525,
    fp64_active_ratio=0.0,
    fp32_active_ratio=0.125,
    fp16_active_ratio=0.03,
    graphics_active_ratio=0.97,
    pcie_tx_bytes_per_second=2 * GIB,
    pcie_rx_bytes_per_second=6 * GIB,
    nvlink_tx_bytes_per_second=120 * GIB,
    nvlink_rx_bytes_per_second=None,  # GPM did not give it: no series
)


def test_profiling_fields_from_gpm_as_ratios_and_bytes_per_second() -> None:
    series = scrape(snapshot(gpu(0, gpm=FIGURES)))
    expected = {
        "DCGM_FI_PROF_SM_ACTIVE": 0.715,
        "DCGM_FI_PROF_SM_OCCUPANCY": 0.3825,
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.44,
        "DCGM_FI_PROF_DRAM_ACTIVE": 0.525,
        "DCGM_FI_PROF_PIPE_FP64_ACTIVE": 0.0,
        "DCGM_FI_PROF_PIPE_FP32_ACTIVE": 0.125,
        "DCGM_FI_PROF_PIPE_FP16_ACTIVE": 0.03,
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.97,
        "DCGM_FI_PROF_PCIE_TX_BYTES": 2 * GIB,
        "DCGM_FI_PROF_PCIE_RX_BYTES": 6 * GIB,
        "DCGM_FI_PROF_NVLINK_TX_BYTES": 120 * GIB,
    }
    assert {name: one(series, name)[1] for name in expected} == expected
    assert "DCGM_FI_PROF_NVLINK_RX_BYTES" not in series


TRAIN = PodContainer(namespace="ml", pod="train-0", container="worker")
SERVE = PodContainer(namespace="ml", pod="serve-1", container="server")


def test_the_one_container_holding_a_gpu_names_its_series() -> None:
    held = gpu(0, pods=(TRAIN,))
    shared = gpu(1, pods=(TRAIN, SERVE))  # time-sliced: which of them is unknown
    series = scrape(snapshot(held, shared))
    temperatures = {dict(labels)["gpu"]: dict(labels) for labels in series["DCGM_FI_DEV_GPU_TEMP"]}
    assert temperatures["0"] == {
        **GPU0_LABELS, "pod": "train-0", "namespace": "ml", "container": "worker",
    }  # fmt: skip
    assert not {"pod", "namespace", "container"} & set(temperatures["1"])


def test_mig_gpu_instances_have_their_own_series() -> None:
    big = MigSample(
        uuid="MIG-a", gpu_instance=1, compute_instance=0, profile="1c.3g.40gb",
        memory_used_bytes=5 * GIB, memory_total_bytes=40 * GIB, gpm=FIGURES, pods=(TRAIN,),
    )  # fmt: skip
    # a second compute instance of the same GPU instance: same memory and figures, one series
    sibling = dataclasses.replace(big, uuid="MIG-b", compute_instance=1, pods=())
    small = MigSample(
        uuid="MIG-c", gpu_instance=2, compute_instance=0, profile="1g.10gb",
        memory_used_bytes=512 * MIB, memory_total_bytes=10 * GIB,
    )  # fmt: skip
    whole = gpu(0, utilization_ratio=None, mig_mode=True, migs=(big, sibling, small), gpm=FIGURES)
    series = scrape(snapshot(whole))
    used = {
        (dict(labels).get("GPU_I_ID"), dict(labels).get("GPU_I_PROFILE")): value
        for labels, value in series["DCGM_FI_DEV_FB_USED"].items()
    }
    assert used == {(None, None): 1000, ("1", "3g.40gb"): 5 * 1024, ("2", "1g.10gb"): 512}
    (instance,) = [dict(labels) for labels in series["DCGM_FI_PROF_SM_ACTIVE"]
                   if "GPU_I_ID" in dict(labels)]  # fmt: skip
    assert instance == {
        **GPU0_LABELS, "GPU_I_PROFILE": "3g.40gb", "GPU_I_ID": "1",
        "pod": "train-0", "namespace": "ml", "container": "worker",
    }  # fmt: skip
    # GPU-wide readings stay on the GPU; no device-level utilization in MIG mode
    assert [dict(labels).get("GPU_I_ID") for labels in series["DCGM_FI_DEV_GPU_TEMP"]] == [None]
    assert "DCGM_FI_DEV_GPU_UTIL" not in series
    assert all("GPU_I_ID" not in dict(labels) for labels in series["DCGM_FI_PROF_PCIE_TX_BYTES"])


def test_never_a_job_or_instance_label_and_every_name_is_dcgms() -> None:
    assert all(field.name.startswith(("DCGM_FI_DEV_", "DCGM_FI_PROF_")) for field in FIELDS)
    assert len({field.name for field in FIELDS}) == len(FIELDS)
    series = scrape(snapshot(gpu(0, gpm=FIGURES, pods=(TRAIN,), xid=XidSample())))
    names = {name for samples in series.values() for labels in samples for name, _ in labels}
    assert not names & {"job", "instance"}
