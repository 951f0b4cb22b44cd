"""The state file (--state-file): its format, atomic writes, and what a damaged one does.

The fault suite (tests/test_faults_polling.py) kills a real service and fills a real disk; these
check the edges in process.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from simulator.nodes import legacy_status
from status_api.cluster import Cluster, Thresholds
from status_api.hosts import parse_hosts
from status_api.poller import PollResult
from status_api.statefile import StateFile, decode, encode

pytestmark = pytest.mark.unit

NODE1, NODE2 = parse_hosts("Node1\nnode2:7081")
THRESHOLDS = Thresholds(idle_held_after=100)


def _idle_held_status() -> dict[str, Any]:
    """GPU 0 held by two processes at 0 % utilization, GPU 1 free."""
    status = legacy_status("node1", gpus=2)
    status["gpus"][0]["utilize"] = 0
    return status


def test_a_state_round_trips_and_empty_nodes_are_left_out() -> None:
    state = {("node1", 7080): {"index 0": 1000.5}, ("node2", 7081): {}}
    assert decode(encode(state, now=2000.0)) == {("node1", 7080): {"index 0": 1000.5}}


@pytest.mark.parametrize(
    "item",
    [
        "node1",
        {"host": "", "port": 7080, "idle_since": {"a": 1.0}},
        {"host": "n", "port": 0, "idle_since": {"a": 1.0}},
        {"host": "n", "port": "7080", "idle_since": {"a": 1.0}},
        {"host": "n", "port": 7080, "idle_since": {"a": "1.0"}},
        {"host": "n", "port": 7080, "idle_since": {"a": True}},
        {"host": "n", "port": 7080, "idle_since": [1.0]},
    ],
)
def test_entries_that_do_not_parse_are_left_out_one_by_one(item: Any) -> None:
    good = {"host": "ok", "port": 1, "idle_since": {"GPU-1": 5.0}}
    data = json.dumps({"version": 1, "nodes": [item, good]}).encode()
    assert decode(data) == {("ok", 1): {"GPU-1": 5.0}}


@pytest.mark.parametrize(
    "contents",
    [b"", b"{", b"\xff\xfe", b"[]", b'{"version": 2, "nodes": []}', b'{"version": 1}'],
)
def test_a_damaged_file_is_a_warning_and_an_empty_state(
    tmp_path: Path, contents: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(contents)
    with caplog.at_level(logging.WARNING):
        assert StateFile(path).load() == {}
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert str(path) in caplog.text


def test_a_missing_file_is_a_first_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert StateFile(tmp_path / "state.json").load() == {}
    assert caplog.records == []


def test_a_directory_in_place_of_the_file_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    assert StateFile(tmp_path / "state.json").load() == {}


def test_saves_only_what_changed_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "state.json")
    state = {("node1", 7080): {"index 0": 1000.0}}
    state_file.save(state)
    state_file.save({key: dict(value) for key, value in state.items()})
    assert state_file.writes == 1
    state_file.save({})
    assert state_file.writes == 2
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert decode((tmp_path / "state.json").read_bytes()) == {}


def test_failed_writes_are_counted_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "later"
    state_file = StateFile(directory / "state.json")
    state = {("node1", 7080): {"index 0": 1000.0}}
    with caplog.at_level(logging.INFO, logger="status_api.statefile"):
        for _ in range(3):
            state_file.save(state)  # the same state: tried again, since it was never written
        directory.mkdir()
        state_file.save(state)
    assert (state_file.failures, state_file.writes) == (3, 1)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "cannot write the state file" in errors[0].getMessage()
    assert "written again" in caplog.records[-1].getMessage()
    assert decode((directory / "state.json").read_bytes()) == state


def test_a_restart_keeps_idle_held_periods_of_listed_nodes_only(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    start = round(time.time()) - 150.0  # the views judge states by the real clock
    before = Cluster(thresholds=THRESHOLDS, state_file=StateFile(path))
    results = [PollResult(host, _idle_held_status(), "", start, 0.01) for host in (NODE1, NODE2)]
    before.update([NODE1, NODE2], results)
    assert decode(path.read_bytes()) == {
        ("node1", 7080): {"index 0": start},
        ("node2", 7081): {"index 0": start},
    }

    # Restarted with node2 gone from hosts.txt, 150 s later: node1's GPU 0 is idle-held since
    # the start (past --idle-held-after), not since the restart.
    after = Cluster(thresholds=THRESHOLDS, state_file=StateFile(path))
    after.set_hosts([NODE1])
    after.update([NODE1], [PollResult(NODE1, _idle_held_status(), "", start + 150, 0.01)])
    gpu = json.loads(after.views.cluster.body)["nodes"][0]["gpus"][0]
    assert (gpu["idle_held"], gpu["idle_held_since"]) == (True, start)
    assert decode(path.read_bytes()) == {("node1", 7080): {"index 0": start}}
    users = json.loads(after.views.users.body)["users"]
    assert sum(user["idle_held_gpus"] for user in users) == 2  # both holders of GPU 0

    # node2 listed again later is a new node: its old period was dropped at the first round.
    after.update([NODE1, NODE2], [PollResult(NODE2, _idle_held_status(), "", start + 160, 0.01)])
    assert after.idle_state()[("node2", 7081)] == {"index 0": start + 160}


def test_a_restored_period_ends_when_the_gpu_computes(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(encode({("node1", 7080): {"index 0": 1000.0}}, now=1100.0))
    cluster = Cluster(thresholds=THRESHOLDS, state_file=StateFile(path))
    cluster.set_hosts([NODE1])
    busy = legacy_status("node1", gpus=2)  # GPU 0 at 87 %
    cluster.update([NODE1], [PollResult(NODE1, busy, "", 1150.0, 0.01)])
    assert cluster.idle_state() == {}
    assert decode(path.read_bytes()) == {}
