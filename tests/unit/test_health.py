"""GPU health: the /metrics parse, the derivation of state and reasons, and the cluster view."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.nodes import legacy_status, metrics_text
from status_api.cluster import Cluster, Thresholds
from status_api.health import (
    LOST,
    LOST_REASON,
    LOST_UNCONFIRMED_REASON,
    OK,
    SICK,
    WARNING,
    XIDS,
    gpu_health,
)
from status_api.hosts import parse_hosts
from status_api.nodemetrics import MAX_GPUS, GpuHealth, parse_metrics
from status_api.poller import PollResult

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
HOUR = 3600.0

HEALTH_TEXT = (
    b"# TYPE gpu_up gauge\n"
    b'gpu_up{gpu="0",uuid="GPU-a"} 1\n'
    b'gpu_up{gpu="1",uuid="GPU-b"} 0\n'
    b'gpu_last_xid{gpu="1",uuid="GPU-b"} 79\n'
    b'gpu_last_xid_timestamp_seconds{gpu="1",uuid="GPU-b"} 1.7e+09\n'
    b'gpu_remapped_rows{gpu="0",cause="correctable"} 3\n'  # not a health family: ignored
    b'gpu_remapped_rows_pending{gpu="0",uuid="GPU-a"} 1\n'
    b'gpu_remapped_rows_failure{gpu="0",uuid="GPU-a"} 0\n'
    b'gpu_retired_pages_pending{gpu="0",uuid="GPU-a"} 0\n'
    b'gpu_pcie_link_generation{gpu="0",uuid="GPU-a"} 3\n'
    b'gpu_pcie_link_generation_max{gpu="0",uuid="GPU-a"} 5\n'
    b'gpu_pcie_link_width{gpu="0",uuid="GPU-a"} 8\n'
    b'gpu_pcie_link_width_max{gpu="0",uuid="GPU-a"} 16\n'
    b'gpu_mig_mode{gpu="0",uuid="GPU-a"} 0\n'
    b'gpu_mig_mode_pending{gpu="0",uuid="GPU-a"} 1\n'
    # Hostile or odd: a flag of 2, a fractional XID, no gpu label, a negative, a look-alike name.
    b'gpu_up{gpu="2"} 2\n'
    b'gpu_last_xid{gpu="2"} 79.5\n'
    b'gpu_remapped_rows_pending{uuid="GPU-c"} 1\n'
    b'gpu_pcie_link_width{gpu="2"} -16\n'
    b'gpu_up_extra{gpu="2"} 0\n'
    b'gpu_mig_mode{gpu="2"} NaN\n'
)


def test_one_parse_gives_each_gpus_health() -> None:
    health = parse_metrics(HEALTH_TEXT).health
    assert health == {
        0: GpuHealth(
            up=True,
            remap_pending=True,
            remap_failure=False,
            retired_pending=False,
            pcie_generation=3,
            pcie_generation_max=5,
            pcie_width=8,
            pcie_width_max=16,
            mig_mode=False,
            mig_mode_pending=True,
        ),
        1: GpuHealth(up=False, last_xid=79, last_xid_at=1.7e9),
    }


def test_health_is_bounded_to_max_gpus() -> None:
    text = b"".join(f'gpu_up{{gpu="{i}"}} 1\n'.encode() for i in range(MAX_GPUS + 10))
    assert len(parse_metrics(text).health) == MAX_GPUS


@settings(max_examples=200, deadline=None)
@given(text=st.binary(max_size=300))
def test_property_health_parsing_never_raises(text: bytes) -> None:
    metrics = parse_metrics(b'gpu_up{gpu="0"} 0\n' + text)
    assert metrics.health[0].up is not None


# ---- the derivation ----------------------------------------------------------------------------


def _gpu(**readings: Any) -> dict[str, Any]:
    gpu = legacy_status("n", gpus=1, users_per_gpu=0)["gpus"][0]
    gpu.update(readings)
    return gpu


LOST_READINGS = {"use_mem": None, "tot_mem": None, "utilize": None, "temp": None}


def _health(gpu: dict[str, Any], health: GpuHealth | None, *, now: float = NOW) -> tuple:
    found = gpu_health(gpu, health, now=now, xid_recent=HOUR, busy_above=5)
    return found.state, list(found.reasons)


def test_a_healthy_gpu_is_ok_without_reasons() -> None:
    assert _health(_gpu(), GpuHealth(up=True)) == (OK, [])
    assert _health(_gpu(), None) == (OK, [])  # an old node: nothing to say


def test_lost_needs_no_readings_and_gpu_up_0() -> None:
    assert _health(_gpu(**LOST_READINGS), GpuHealth(up=False)) == (LOST, [LOST_REASON])
    # No /metrics (the old node_info.py): no readings alone, and the reason says so.
    assert _health(_gpu(**LOST_READINGS), None) == (LOST, [LOST_UNCONFIRMED_REASON])
    assert "no gpu_up" in LOST_UNCONFIRMED_REASON
    # gpu_up 0 from an older scrape while the legacy readings are back: not lost.
    assert _health(_gpu(), GpuHealth(up=False)) == (OK, [])
    state, reasons = _health(_gpu(**LOST_READINGS), GpuHealth(up=True))
    assert state == WARNING and reasons[0].startswith("no readings")
    # One reading is enough to not be lost.
    assert _health(_gpu(**{**LOST_READINGS, "temp": 40}), GpuHealth(up=False))[0] == OK


@pytest.mark.parametrize(
    ("code", "state", "meaning"),
    [
        (48, SICK, "double-bit ECC error"),
        (63, WARNING, "row remap or page retirement recorded, applied at the next reset"),
        (64, SICK, "row remapping failed"),
        (74, SICK, "NVLink error"),
        (79, SICK, "fell off the bus"),
        (92, WARNING, "high rate of corrected ECC errors"),
        (94, SICK, "contained ECC error"),
        (95, SICK, "uncontained ECC error"),
        (119, SICK, "GSP timed out"),
        (120, SICK, "GSP error"),
    ],
)
def test_a_recent_xid_by_the_alerts_grouping(code: int, state: str, meaning: str) -> None:
    at = NOW - 120
    clock = time.strftime("%H:%M", time.localtime(at))
    found = _health(_gpu(), GpuHealth(up=True, last_xid=code, last_xid_at=at))
    assert found == (state, [f"XID {code} at {clock} ({meaning})"])


def test_the_table_covers_exactly_the_codes_of_the_alerts() -> None:
    assert sorted(XIDS) == [48, 63, 64, 74, 79, 92, 94, 95, 119, 120]


def test_xid_recent_window_edges_and_unknown_codes() -> None:
    def state(code: int, at: float) -> str:
        return _health(_gpu(), GpuHealth(up=True, last_xid=code, last_xid_at=at))[0]

    assert state(79, NOW - HOUR) == SICK  # at the edge of the window
    assert state(79, NOW - HOUR - 1) == OK  # older
    assert state(79, NOW + 60) == SICK  # a node clock a minute ahead
    assert state(79, 1e300) == OK  # nonsense time
    assert state(13, NOW) == OK  # an application error: not the GPU's health
    assert _health(_gpu(), GpuHealth(up=True, last_xid=79))[0] == OK  # no time: no judgement


def test_an_old_xid_shows_its_date() -> None:
    at = NOW - 3 * 86400
    found = gpu_health(
        _gpu(), GpuHealth(last_xid=48, last_xid_at=at), now=NOW, xid_recent=7 * 86400, busy_above=5
    )
    day = time.strftime("%Y-%m-%d %H:%M", time.localtime(at))
    assert found.reasons == (f"XID 48 at {day} (double-bit ECC error)",)


def test_memory_repair_pcie_and_mig_reasons_worst_first() -> None:
    health = parse_metrics(HEALTH_TEXT).health[0]
    busy = _gpu(utilize=87)
    assert _health(busy, health) == (
        WARNING,
        [
            "memory row remap pending: reset the GPU",
            "PCIe link at Gen3 x8, capable of Gen5 x16",
            "MIG mode changes at the next reset (turns on)",
        ],
    )
    health.remap_failure = True
    health.retired_pending = True
    state, reasons = _health(busy, health)
    assert state == SICK and reasons[0] == "row remapping failed: replace the GPU"
    assert "memory page retirement pending: reset the GPU" in reasons


@pytest.mark.parametrize(
    ("utilize", "degraded"), [(87, True), (6, True), (5, False), (None, False)]
)
def test_pcie_degraded_counts_only_while_busy(utilize: int | None, degraded: bool) -> None:
    health = GpuHealth(pcie_generation=4, pcie_generation_max=4, pcie_width=8, pcie_width_max=16)
    assert _health(_gpu(utilize=utilize), health)[0] == (WARNING if degraded else OK)
    full = GpuHealth(pcie_generation=5, pcie_generation_max=5, pcie_width=16, pcie_width_max=16)
    assert _health(_gpu(utilize=utilize), full)[0] == OK


# ---- the cluster view --------------------------------------------------------------------------

HOSTS = parse_hosts("gpu-a")


def _view(status: dict[str, Any], text: bytes | None, *, at: float) -> dict[str, Any]:
    metrics = parse_metrics(text) if text is not None else None
    result = PollResult(
        HOSTS[0],
        status,
        "",
        at,
        0.01,
        None if metrics is None else metrics.power,
        None if metrics is None else metrics.processes,
        None if metrics is None else metrics.uuids,
        None if metrics is None else metrics.health,
    )
    cluster = Cluster(thresholds=Thresholds(stale_after=1e9, offline_after=1e9))
    cluster.update(HOSTS, [result])
    return json.loads(cluster.views.cluster.body)


def test_sick_and_lost_gpus_are_never_free_and_are_counted() -> None:
    status = legacy_status("gpu-a", gpus=4, users_per_gpu=0)
    for gpu in status["gpus"]:
        gpu["utilize"] = 0  # every GPU would be free by its readings
    status["gpus"][2].update(LOST_READINGS)
    now = time.time()
    text = metrics_text(
        status,
        health={
            0: {"gpu_last_xid": 48, "gpu_last_xid_timestamp_seconds": now - 60},
            1: {"gpu_remapped_rows_pending": 1},
            2: {"gpu_up": 0, "gpu_last_xid": 79, "gpu_last_xid_timestamp_seconds": now - 30},
        },
    )
    document = _view(status, text, at=now)
    gpus = document["nodes"][0]["gpus"]
    assert [gpu["health"]["state"] for gpu in gpus] == [SICK, WARNING, LOST, OK]
    assert [gpu["free"] for gpu in gpus] == [False, True, False, True]
    assert gpus[2]["health"]["reasons"][0] == LOST_REASON
    assert gpus[2]["health"]["reasons"][1].startswith("XID 79 at ")
    assert gpus[3]["health"] == {"state": OK, "reasons": []}
    summary = document["summary"]
    assert (summary["gpus_free"], summary["gpus_warning"]) == (2, 1)
    assert (summary["gpus_sick"], summary["gpus_lost"]) == (1, 1)
    assert document["thresholds"]["xid_recent"] == HOUR


def test_a_node_without_metrics_shows_a_gpu_without_readings_as_lost() -> None:
    status = legacy_status("gpu-a", gpus=2, users_per_gpu=0)
    status["gpus"][1].update(LOST_READINGS)
    document = _view(status, b"", at=time.time())
    gpus = document["nodes"][0]["gpus"]
    assert [gpu["health"]["state"] for gpu in gpus] == [OK, LOST]
    assert gpus[1]["health"]["reasons"] == [LOST_UNCONFIRMED_REASON]
    assert document["summary"]["gpus_lost"] == 1
