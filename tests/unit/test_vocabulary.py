"""The words of status_api/vocabulary.py, one GPU at a time, and the report's add-up note."""

from __future__ import annotations

from typing import Any

import pytest

from status_api.report import Row, StateRow, add_up_note
from status_api.vocabulary import (
    Thresholds,
    gpu_state,
    holds_without_compute,
    is_idle_held,
    shares,
)

pytestmark = pytest.mark.unit

THRESHOLDS = Thresholds(free_memory_mib=512, free_utilization=5, idle_held_after=1800)


def gpu(use_mem: int | None = 0, utilize: int | None = 0, *holders: tuple[int, str, int]) -> dict:
    return {
        "index": 0,
        "use_mem": use_mem,
        "utilize": utilize,
        "users": [{"pid": pid, "username": user, "mem(MiB)": mib} for pid, user, mib in holders],
    }


@pytest.mark.parametrize(
    ("reading", "online", "health", "state"),
    [
        (gpu(), True, "ok", "free"),
        (gpu(), True, "warning", "free"),  # a warning is worth a look, not out of service
        (gpu(), False, "ok", "stale"),  # a stale node's GPUs are not counted as anything now
        (gpu(), False, "sick", "stale"),
        (gpu(), True, "sick", "sick"),
        (gpu(None, None), True, "lost", "lost"),
        (gpu(4000, 90, (7, "ann", 4000)), True, "sick", "sick"),  # held, but sick first
        (gpu(4000, 90, (7, "ann", 4000)), True, "ok", "in_use"),
        (gpu(0, 5), True, "ok", "in_use"),  # computing without a process to show for it
        (gpu(513, 0), True, "ok", "in_use"),
        (gpu(512, None), True, "ok", "free"),  # MIG mode: no utilization, memory decides
        (gpu(6000, None, (7, "ann", 1000)), True, "ok", "in_use"),  # one busy MIG slice
    ],
)
def test_each_gpu_has_one_state(reading: dict, online: bool, health: str, state: str) -> None:
    assert gpu_state(reading, node_online=online, health=health, thresholds=THRESHOLDS) == state


def test_held_without_compute_by_process_where_reported_else_by_the_gpu() -> None:
    shared = gpu(3000, 80, (1, "ann", 1000), (2, "bob", 2000), (3, "cy", 0))
    assert holds_without_compute(shared, {1: 0.0, 2: None, 3: 0.9}, THRESHOLDS)  # 3 holds nothing
    assert not holds_without_compute(shared, {1: 0.0, 2: 0.1}, THRESHOLDS)
    assert not holds_without_compute(shared, None, THRESHOLDS)  # 80 % busy
    assert holds_without_compute(gpu(1000, 4, (1, "ann", 1000)), None, THRESHOLDS)
    assert not holds_without_compute(gpu(1000, 5, (1, "ann", 1000)), None, THRESHOLDS)
    assert not holds_without_compute(gpu(1000, None, (1, "ann", 1000)), None, THRESHOLDS)
    assert not holds_without_compute(gpu(0, 0, (1, "ann", 0)), None, THRESHOLDS)


def test_idle_held_from_the_threshold_on() -> None:
    assert not is_idle_held(None, as_of=5000, thresholds=THRESHOLDS)
    assert not is_idle_held(1000, as_of=2799, thresholds=THRESHOLDS)
    assert is_idle_held(1000, as_of=2800, thresholds=THRESHOLDS)


def test_shares_are_even_among_holders_and_add_up_to_one() -> None:
    users: list[dict[str, Any]] = [
        {"username": "ann", "slurm_job": "7", "mem(MiB)": 100},
        {"username": "ann", "slurm_job": "7", "mem(MiB)": 200},
        {"username": "bob", "slurm_job": "", "mem(MiB)": 300},
        {"username": "", "slurm_job": "8", "mem(MiB)": 50},
        {"username": "dan", "slurm_job": "9", "mem(MiB)": 0},  # holds nothing
    ]
    assert shares(users, key="username") == {"ann": 1 / 3, "bob": 1 / 3, "": 1 / 3}
    # the processes outside any job are one more holder; its share is nobody's
    assert shares(users, key="slurm_job") == {"7": 1 / 3, "": 1 / 3, "8": 1 / 3}
    assert shares([], key="username") == {}


def states(**hours: float) -> list[StateRow]:
    return [StateRow(state, value, 0.0) for state, value in hours.items()]


def test_report_note_says_when_and_why_the_groups_do_not_add_up() -> None:
    rows = [Row("ann", 6.0, 0.5, 1.0), Row("bob", 4.0, 0.2, 0.0)]
    note = add_up_note(rows, states(held=10.0, in_use=10.0), by="user")
    assert "10.00 GPU-hours charged" in note and "do not add up" not in note
    assert "differ" not in note
    note = add_up_note(rows, states(held=12.0, in_use=13.0), by="slurm_job")
    assert "do not add up" in note and "outside any slurm job" in note
    assert "busy without a process" in note
    assert add_up_note(rows, [], by="user") == ""  # no cluster counters: nothing to compare


def test_threshold_series_that_differ_from_the_service_are_named() -> None:
    from status_api.vocabulary import THRESHOLD_SERIES, threshold_mismatches

    same = [({"__name__": name}, float(getattr(THRESHOLDS, attribute)))
            for name, attribute in THRESHOLD_SERIES.items()]  # fmt: skip
    assert threshold_mismatches(same, THRESHOLDS) == []
    other = [
        (labels, 3600.0 if labels["__name__"].endswith("idle_held_after_seconds:threshold") else v)
        for labels, v in same
    ]
    assert threshold_mismatches(other, THRESHOLDS) == [
        "cluster:gpu_idle_held_after_seconds:threshold is 3600, --idle-held-after 1800"
    ]
    assert len(threshold_mismatches([], THRESHOLDS)) == len(THRESHOLD_SERIES)
