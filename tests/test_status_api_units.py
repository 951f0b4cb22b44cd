"""The status service's pure parts: node answer checks, power parsing, node states, JSON views."""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.nodes import FakeNodes, legacy_status
from status_api.cluster import OFFLINE, ONLINE, STALE, Cluster, NodeState, Thresholds
from status_api.hosts import parse_hosts
from status_api.nodedata import NodeDataError, parse_status, validate_status
from status_api.nodemetrics import parse_power
from status_api.poller import NodeClient, PollResult, PollSettings
from tests.support.old_node import jsonify, node_info_status, sample_gpus

pytestmark = pytest.mark.unit


def _status(**overrides: Any) -> dict[str, Any]:
    status = legacy_status("gpu-a", gpus=2, users_per_gpu=2)
    status.update(overrides)
    return status


def _spell_mem_as_0_1(user: dict[str, Any], value: object) -> None:
    """The process as gpu-exporter 0.1.0 wrote it: ``mem``, not ``mem(MiB)``."""
    del user["mem(MiB)"]
    user["mem"] = value


# ---- node answers ----------------------------------------------------------------------------


def test_valid_status_comes_back_in_legacy_key_order() -> None:
    original = _status()
    shuffled = dict(reversed(list(original.items())))
    checked = validate_status(shuffled)
    assert list(checked) == ["hostname", "last_update", "ips", "gpus"]
    assert list(checked["gpus"][0]) == [
        "index", "name", "use_mem", "tot_mem", "utilize", "temp", "users",
    ]  # fmt: skip
    assert list(checked["gpus"][0]["users"][0]) == ["pid", "username", "mem(MiB)", "command"]
    assert checked == original


def test_old_node_info_answer_is_accepted_as_sent() -> None:
    """node_info.py sorted its keys (Flask's jsonify) and wrote ``mem(MiB)``."""
    original = node_info_status("gpu-old", sample_gpus())
    checked = parse_status(jsonify(original))
    assert list(checked) == ["hostname", "last_update", "ips", "gpus"]
    assert list(checked["gpus"][0]["users"][0]) == ["pid", "username", "mem(MiB)", "command"]
    assert checked == original
    assert [u["mem(MiB)"] for u in checked["gpus"][0]["users"]] == [12288, 6144]


def test_mem_of_0_1_exporters_is_read_as_mem_mib() -> None:
    """gpu-exporter 0.1.0 wrote ``mem``; a fleet being upgraded sends both spellings."""
    status = _status()
    for user in status["gpus"][0]["users"]:
        _spell_mem_as_0_1(user, user["mem(MiB)"])
    checked = validate_status(status)
    assert [list(u) for u in checked["gpus"][0]["users"]] == [
        ["pid", "username", "mem(MiB)", "command"]
    ] * 2
    assert [u["mem(MiB)"] for u in checked["gpus"][0]["users"]] == [1200, 1200]
    assert checked == _status()


def test_nulls_for_unreadable_values_and_extra_keys_dropped() -> None:
    status = _status()
    status["gpus"][0].update(use_mem=None, tot_mem=None, utilize=None, temp=None, fan=3)
    status["extra"] = {"x": 1}
    checked = validate_status(status)
    assert checked["gpus"][0]["temp"] is None
    assert "fan" not in checked["gpus"][0]
    assert "extra" not in checked


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("gpus"), "status: missing 'gpus'"),
        (lambda s: s.update(hostname=5), "hostname: expected a string, got 5"),
        (lambda s: s.update(gpus="many"), "gpus: expected a list"),
        (lambda s: s.update(ips=[["eth0"]]), "ips[0]: expected [interface, address]"),
        (lambda s: s["gpus"][1].update(index="1"), "gpus[1].index: expected an integer"),
        (lambda s: s["gpus"][1].update(index=True), "gpus[1].index: expected an integer"),
        (lambda s: s["gpus"][0].update(temp="hot"), "gpus[0].temp: expected a number or null"),
        (lambda s: s["gpus"][0]["users"][1].update(pid=None), "gpus[0].users[1].pid"),
        (lambda s: s["gpus"][0]["users"][0].pop("command"), "gpus[0].users[0]: missing 'command'"),
        (
            lambda s: s["gpus"][0]["users"][1].pop("mem(MiB)"),
            "gpus[0].users[1]: missing 'mem(MiB)'",
        ),
        (
            lambda s: s["gpus"][0]["users"][0].update({"mem(MiB)": "1 GiB"}),
            "gpus[0].users[0].mem(MiB): expected a number or null, got '1 GiB'",
        ),
        (
            lambda s: _spell_mem_as_0_1(s["gpus"][0]["users"][0], [1]),
            "gpus[0].users[0].mem: expected a number or null, got [1]",
        ),
        (lambda s: s["gpus"].append([]), "gpus[2]: expected an object"),
    ],
)
def test_wrong_shapes_name_the_field(mutate: Any, message: str) -> None:
    status = _status()
    mutate(status)
    with pytest.raises(NodeDataError) as caught:
        validate_status(status)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not JSON"),
        (b"<html>", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "expected an object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"hostname": "a", "last_update": "x", "ips": [], "gpus": [NaN]}', "expected an object"),
    ],
)
def test_bodies_that_are_not_a_status(body: bytes, message: str) -> None:
    with pytest.raises(NodeDataError, match=message):
        parse_status(body)


def test_long_strings_are_cut() -> None:
    status = _status()
    status["gpus"][0]["users"][0]["command"] = "x" * 100_000
    status["hostname"] = "h" * 10_000
    checked = validate_status(status)
    assert len(checked["gpus"][0]["users"][0]["command"]) == 4096
    assert len(checked["hostname"]) == 256


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["hostname", "gpus", "ips", "last_update", "index", "users", "x"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(document=_json)
def test_property_any_json_is_checked_or_rejected(document: object) -> None:
    try:
        checked = validate_status(document)
    except NodeDataError:
        return
    json.dumps(checked)  # whatever passes can be served


# Every leaf of a status (two GPUs, two processes on GPU 0): its path in error messages, its kind.
_LEAVES: list[tuple[tuple[str | int, ...], str, str]] = [
    (("hostname",), "hostname", "string"),
    (("last_update",), "last_update", "string"),
    (("ips", 0, 0), "ips[0][0]", "string"),
    (("ips", 0, 1), "ips[0][1]", "string"),
    *(
        (("gpus", g, key), f"gpus[{g}].{key}", kind)
        for g in (0, 1)
        for key, kind in [
            ("index", "integer"),
            ("name", "string"),
            ("use_mem", "number"),
            ("tot_mem", "number"),
            ("utilize", "number"),
            ("temp", "number"),
        ]
    ),
    *(
        (("gpus", 0, "users", u, key), f"gpus[0].users[{u}].{key}", kind)
        for u in (0, 1)
        for key, kind in [
            ("pid", "integer"),
            ("username", "string"),
            ("mem(MiB)", "number"),
            ("command", "string"),
        ]
    ),
]
_containers = st.lists(st.integers(), max_size=2) | st.dictionaries(
    st.text(max_size=3), st.integers(), max_size=2
)
_WRONG = {
    "string": st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _containers,
    "integer": st.none() | st.booleans() | st.floats(allow_nan=False) | st.text() | _containers,
    "number": st.booleans() | st.text() | _containers | st.sampled_from([math.inf, math.nan]),
}
_EXPECTED = {
    "string": "expected a string",
    "integer": "expected an integer",
    "number": "expected a",  # "a number or null", or "a finite number" for NaN and Infinity
}


@st.composite
def _one_field_wrong(draw: st.DrawFn) -> tuple[bytes, str, str]:
    path, where, kind = draw(st.sampled_from(_LEAVES))
    value = draw(_WRONG[kind])
    status: Any = _status()
    target = status
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return json.dumps(status).encode(), where, kind


@settings(max_examples=300, deadline=None)
@given(case=_one_field_wrong())
def test_property_a_body_with_one_wrong_field_is_rejected_naming_it(
    case: tuple[bytes, str, str],
) -> None:
    """Valid JSON of the right shape, one leaf of the wrong type: the error names that leaf."""
    body, where, kind = case
    with pytest.raises(NodeDataError) as caught:
        parse_status(body)
    assert str(caught.value).startswith(f"{where}: {_EXPECTED[kind]}"), (where, str(caught.value))


# ---- power from /metrics ------------------------------------------------------------------


def test_power_from_an_exposition() -> None:
    text = (
        b"# HELP gpu_power_watts Power drawn by the board.\n"
        b"# TYPE gpu_power_watts gauge\n"
        b'gpu_power_watts{gpu="0",uuid="GPU-a"} 312.25\n'
        b'gpu_power_watts{uuid="GPU-b",gpu="1"} 80\n'
        b'gpu_power_limit_watts{gpu="0",uuid="GPU-a"} 700.0\n'
        b'gpu_process_memory_used_bytes{gpu="0",pid="1",user="gpu_power_watts{gpu=\\"3\\"} 9"} 1\n'
        b'xgpu_power_watts{gpu="2"} 5\n'
        b'gpu_power_watts{gpu="4"} NaN\n'
        b'gpu_power_watts{gpu="5"} junk\n'
        b'gpu_power_watts{nogpu="6"} 1\n'
        b'gpu_sm_active_ratio{gpu="1",uuid="GPU-b"} 0.0625\n'
        b'gpu_sm_active_ratio_other{gpu="0"} 0.5\n'
    )
    assert parse_power(text) == {
        0: {"power": 312.2, "power_limit": 700.0},
        1: {"power": 80.0, "sm_active": 0.062},
    }


@settings(max_examples=200, deadline=None)
@given(text=st.binary(max_size=300))
def test_property_power_parsing_never_raises(text: bytes) -> None:
    result = parse_power(
        b'gpu_power_watts{gpu="0"} 1\n' + text + b'\ngpu_power_watts{gpu="9"} 2.25\n'
    )
    assert result[9]["power"] == 2.2  # rounded to 0.1 W; read whatever came before
    assert result[0]["power"] >= 0 and math.isfinite(result[0]["power"])
    for index, readings in result.items():
        assert 0 <= index < 10**6
        assert set(readings) <= {"power", "power_limit"}
        assert all(math.isfinite(v) and v >= 0 for v in readings.values()), (index, readings)
    if b"gpu_power" not in text:
        assert result == {0: {"power": 1.0}, 9: {"power": 2.2}}


# ---- states and views ------------------------------------------------------------------------

THRESHOLDS = Thresholds(stale_after=10, offline_after=30)


def _result(host_text: str, status: dict | None, *, at: float, error: str = "") -> PollResult:
    host = parse_hosts(host_text)[0]
    return PollResult(host, status, error, at, 0.01, None)


def test_node_states_by_age_and_latest_poll() -> None:
    node = NodeState(parse_hosts("node1")[0])
    assert node.state(1000.0, THRESHOLDS) == OFFLINE  # never seen
    node.record(_result("node1", _status(), at=1000.0))
    assert node.state(1000.0, THRESHOLDS) == ONLINE
    assert node.state(1010.0, THRESHOLDS) == ONLINE
    assert node.state(1010.5, THRESHOLDS) == STALE  # no new poll for too long
    node.record(_result("node1", None, at=1003.0, error="cannot connect: Connection refused"))
    assert node.state(1003.0, THRESHOLDS) == STALE  # last poll failed, data is recent
    assert node.error == "cannot connect: Connection refused"
    assert node.status is not None  # the last good status is kept
    assert node.state(1030.5, THRESHOLDS) == OFFLINE
    node.record(_result("node1", _status(), at=1031.0))
    assert node.state(1031.0, THRESHOLDS) == ONLINE
    assert node.error == ""
    assert (node.polls, node.failures) == (3, 1)


def _cluster_with(results: list[PollResult], hosts_text: str) -> Cluster:
    cluster = Cluster(thresholds=THRESHOLDS, interval=2.0)
    cluster.update(parse_hosts(hosts_text), results, 0.5)
    return cluster


def test_views_summary_free_gpus_and_legacy_shape() -> None:
    now = time.time()
    busy = _status(hostname="busy")
    busy["gpus"][1]["use_mem"] = 600  # no process, but over the free threshold
    idle = _status(hostname="idle")
    for gpu in idle["gpus"]:
        gpu.update(users=[], use_mem=3, utilize=0)
    results = [
        _result("busy:7080", busy, at=now),
        _result("idle:7080", idle, at=now),
        _result("down:7080", None, at=now, error="no answer within 1 s"),
    ]
    cluster = _cluster_with(results, "busy\nidle\ndown\n")
    document = json.loads(cluster.views.cluster.body)
    assert list(document) == ["generated_at", "interval", "thresholds", "summary", "error", "nodes"]
    assert document["summary"] == {
        "nodes_total": 3, "nodes_online": 2, "nodes_stale": 0, "nodes_offline": 1,
        # busy's GPU 1 holds 600 MiB without a process: in use all the same
        "gpus_total": 4, "gpus_in_use": 2, "gpus_idle_held": 0, "gpus_free": 2,
        "gpus_stale": 0, "gpus_warning": 0, "gpus_sick": 0, "gpus_lost": 0,
        "memory_used_mib": 2400 + 600 + 3 + 3, "memory_total_mib": 4 * 81920,
    }  # fmt: skip
    busy_node, idle_node, down = document["nodes"]
    assert [g["free"] for g in busy_node["gpus"]] == [False, False]
    assert [g["free"] for g in idle_node["gpus"]] == [True, True]
    assert busy_node["gpus"][0]["power"] is None
    # /api/v1/cluster keeps its own schema: a process's memory is "mem" there.
    assert busy_node["gpus"][0]["users"][0] == {
        "pid": 10000, "username": "user0", "mem": 1200,
        "command": "python train.py --gpu 0 --run 0",
        "slurm_job": "", "container": "", "pod": "", "namespace": "", "mig_uuid": "",
        "sm_utilization": None,
    }  # fmt: skip
    assert down == {
        "node": "down", "address": "down:7080", "state": "offline", "last_seen": None,
        "error": "no answer within 1 s", "poll_seconds": 0.01, "hostname": "down",
        "last_update": None, "ips": [], "gpus": [],
    }  # fmt: skip

    legacy = json.loads(cluster.views.legacy.body)
    assert list(legacy) == ["Nodes"]
    first = legacy["Nodes"][0]
    assert list(first) == ["hostname", "last_update", "ips", "gpus", "status", "version"]
    assert first["status"] is True and first["version"] == "NVIDIA A100-SXM4-80GB"
    assert first["gpus"] == busy["gpus"]  # exactly the node's own GPUs, no additions
    assert list(first["gpus"][0]["users"][0]) == ["pid", "username", "mem(MiB)", "command"]
    assert legacy["Nodes"][2] == {"hostname": "down", "status": False, "gpus": []}
    assert gzip.decompress(cluster.views.legacy.gzipped) == cluster.views.legacy.body


def test_stale_node_keeps_gpus_but_offers_none_as_free() -> None:
    now = time.time()
    idle = _status(hostname="idle")
    for gpu in idle["gpus"]:
        gpu.update(users=[], use_mem=0, utilize=0)
    cluster = Cluster(thresholds=THRESHOLDS)
    hosts = parse_hosts("idle")
    cluster.update(hosts, [_result("idle", idle, at=now)])
    cluster.update(hosts, [_result("idle", None, at=now, error="HTTP 403: wrong password")])
    document = json.loads(cluster.views.cluster.body)
    (node,) = document["nodes"]
    assert node["state"] == "stale"
    assert len(node["gpus"]) == 2 and not any(g["free"] for g in node["gpus"])
    assert document["summary"]["gpus_total"] == 2 and document["summary"]["gpus_free"] == 0
    legacy = json.loads(cluster.views.legacy.body)["Nodes"][0]
    assert legacy["status"] is False and legacy["hostname"] == "idle" and len(legacy["gpus"]) == 2


def test_a_lost_gpu_is_never_offered_as_free() -> None:
    status = _status(hostname="lossy")
    status["gpus"][0].update(users=[], use_mem=0, utilize=0)
    # The exporter reports a lost GPU with every reading null.
    status["gpus"][1].update(users=[], use_mem=None, tot_mem=None, utilize=None, temp=None)
    cluster = Cluster(thresholds=THRESHOLDS)
    cluster.update(parse_hosts("lossy"), [_result("lossy", status, at=time.time())])
    document = json.loads(cluster.views.cluster.body)
    assert [g["free"] for g in document["nodes"][0]["gpus"]] == [True, False]
    assert document["summary"]["gpus_free"] == 1


def test_power_readings_merge_and_persist_between_reads() -> None:
    now = time.time()
    cluster = Cluster(thresholds=THRESHOLDS)
    hosts = parse_hosts("gpu-a")
    with_power = PollResult(hosts[0], _status(), "", now, 0.01, {1: {"power": 99.5}})
    cluster.update(hosts, [with_power])
    without = PollResult(hosts[0], _status(), "", now, 0.01, None)  # power not read this round
    cluster.update(hosts, [without])
    gpus = json.loads(cluster.views.cluster.body)["nodes"][0]["gpus"]
    assert [(g["power"], g["power_limit"]) for g in gpus] == [(None, None), (99.5, None)]


def test_hosts_changes_keep_state_of_remaining_nodes() -> None:
    now = time.time()
    cluster = Cluster(thresholds=THRESHOLDS)
    cluster.update(
        parse_hosts("a\nb"), [_result("a", _status(), at=now), _result("b", None, at=now)]
    )
    cluster.update(parse_hosts("c\na"), [])
    nodes = json.loads(cluster.views.cluster.body)["nodes"]
    assert [(n["node"], n["state"]) for n in nodes] == [("c", "offline"), ("a", "online")]
    # b left hosts.txt; when it comes back it is a new node, nothing carried over.
    cluster.update(parse_hosts("c\na\nb"), [])
    back = json.loads(cluster.views.cluster.body)["nodes"][2]
    assert (back["node"], back["state"], back["error"], back["last_seen"]) == (
        "b",
        "offline",
        "",
        None,
    )
    assert [(n.host.text, n.polls) for n, _ in cluster.views.nodes] == [
        ("c", 0),
        ("a", 1),
        ("b", 0),
    ]


def test_hostile_text_is_escaped_in_both_views() -> None:
    status = _status(hostname='<script>alert("x")</script>\u2028')
    status["gpus"][0]["users"][0]["command"] = 'rm -rf / \udcff "quoted" \n</script>'
    cluster = _cluster_with([_result("gpu-a", copy.deepcopy(status), at=time.time())], "gpu-a")
    for view in (cluster.views.cluster, cluster.views.legacy):
        view.body.decode("ascii")  # every non-ASCII character is escaped
        assert b"\\u2028" in view.body
        assert json.loads(view.body)  # and it still parses
    document = json.loads(cluster.views.cluster.body)
    assert document["nodes"][0]["hostname"] == status["hostname"]


def test_etags_change_every_round_and_differ_between_instances() -> None:
    hosts = parse_hosts("a")
    first, second = Cluster(), Cluster()
    first.update(hosts, [])
    tag = first.views.cluster.etag
    first.update(hosts, [])
    assert first.views.cluster.etag != tag
    second.update(hosts, [])
    second.update(hosts, [])
    assert second.views.cluster.etag != first.views.cluster.etag


# ---- the poller's memory of nodes ------------------------------------------------------------


async def _rounds_leaving_and_coming_back(hosts_text: str) -> tuple[list, list, set, list]:
    a, b = parse_hosts(hosts_text)
    client = NodeClient(PollSettings(password=lambda: "x", power_interval=600.0))
    try:
        first = await client.poll_all([a, b])
        second = await client.poll_all([a, b])
        await client.poll_all([a])  # b left hosts.txt
        remembered = client.remembered
        back = await client.poll_all([a, b])  # and came back
    finally:
        await client.close()
    return first, second, remembered, back


def test_a_node_that_leaves_hosts_txt_is_forgotten_and_polled_afresh() -> None:
    with FakeNodes(["ok", "ok"], gpus=1) as nodes:
        hosts_text = "\n".join(nodes.hosts_lines())
        first, second, remembered, back = asyncio.run(_rounds_leaving_and_coming_back(hosts_text))
    a = parse_hosts(hosts_text)[0]
    assert all(result.ok and result.power for result in first)  # power read on the first poll
    assert [result.power for result in second] == [None, None]  # not due again for 600 s
    assert remembered == {a.key}  # nothing about b is left
    assert back[1].ok and back[1].power == first[1].power  # b is new again: power read at once
    assert back[0].power is None  # a is still remembered
