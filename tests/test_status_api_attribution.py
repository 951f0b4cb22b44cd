"""Per-process attribution and idle-but-held GPUs in the status service, from hand-built input.

The node's ``/metrics`` text gives per process its Slurm job, pod, container, namespace and SM
utilization; the service joins them to the legacy processes by (GPU index, pid) and tracks, per
GPU, how long its processes have held memory without computing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.nodes import legacy_status
from status_api.cluster import Cluster, Thresholds
from status_api.hosts import parse_hosts
from status_api.nodemetrics import MAX_LABEL, ProcessMetrics, parse_metrics
from status_api.poller import PollResult

pytestmark = pytest.mark.unit

EXPOSITION = (
    b"# TYPE gpu_power_watts gauge\n"
    b'gpu_power_watts{gpu="0",uuid="GPU-a"} 312.25\n'
    b'gpu_power_limit_watts{gpu="0",uuid="GPU-a"} 700\n'
    b"# TYPE gpu_process_info gauge\n"
    b'gpu_process_info{gpu="0",uuid="GPU-a",pid="10000",user="alice",slurm_job="4242",'
    b'container="",pod="",namespace=""} 1\n'
    b'gpu_process_info{gpu="0",uuid="GPU-a",pid="10001",user="bob",slurm_job="",'
    b'container="trainer",pod="train-0",namespace="ml",command="x} 1\\n\\"y\\""} 1\n'
    b'gpu_process_sm_utilization_ratio{gpu="0",uuid="GPU-a",pid="10000"} 0\n'
    b'gpu_process_sm_utilization_ratio{gpu="0",uuid="GPU-a",pid="10001"} 0.75\n'
    # Look-alikes: not at a line start, out of range, not a number, no pid.
    b'gpu_process_memory_used_bytes{gpu="0",pid="1",user="gpu_process_info{gpu=\\"0\\"} 1"} 1\n'
    b'gpu_process_sm_utilization_ratio{gpu="1",pid="7"} 1.5\n'
    b'gpu_process_sm_utilization_ratio{gpu="1",pid="8"} NaN\n'
    b'gpu_process_info{gpu="1",slurm_job="9"} 1\n'
)


def test_one_parse_gives_power_uuids_and_attribution() -> None:
    metrics = parse_metrics(EXPOSITION)
    assert metrics.power == {0: {"power": 312.2, "power_limit": 700.0}}
    assert metrics.uuids == {0: "GPU-a"}
    assert metrics.processes == {
        (0, 10000): ProcessMetrics(slurm_job="4242", sm_utilization=0.0),
        (0, 10001): ProcessMetrics(
            container="trainer", pod="train-0", namespace="ml", sm_utilization=0.75
        ),
    }


def test_label_values_are_unescaped_and_bounded() -> None:
    long = "j" * (MAX_LABEL * 10)
    text = (
        f'gpu_process_info{{gpu="2",pid="5",slurm_job="{long}",pod="a\\"b\\\\c"}} 1\n'.encode()
        + b'gpu_process_info{gpu="2",pid="6",pod="\xff\xfe"} 1\n'
    )
    processes = parse_metrics(text).processes
    assert processes[(2, 5)].slurm_job == "j" * MAX_LABEL
    assert processes[(2, 5)].pod == 'a"b\\c'
    assert processes[(2, 6)].pod == "\ufffd\ufffd"


@settings(max_examples=200, deadline=None)
@given(text=st.binary(max_size=300))
def test_property_parsing_never_raises(text: bytes) -> None:
    metrics = parse_metrics(b'gpu_process_info{gpu="0",pid="1"} 1\n' + text)
    assert (0, 1) in metrics.processes


# ---- the cluster view ------------------------------------------------------------------------

# Online whatever the clock: the rounds below are dated from 1000 s after the epoch, and only
# the GPUs of online nodes are idle-held.
THRESHOLDS = Thresholds(stale_after=1e10, offline_after=1e10, idle_held_after=100)
HOSTS = parse_hosts("gpu-a")


def _status(*, utilize: int = 87) -> dict[str, Any]:
    """GPU 0 held by pids 10000 and 10001 (1200 MiB each); GPU 1 unused."""
    status = legacy_status("gpu-a", gpus=2, users_per_gpu=2)
    status["gpus"][0]["utilize"] = utilize
    return status


def _metrics(sm: dict[int, float] | None) -> bytes:
    lines = [
        b'gpu_power_watts{gpu="0",uuid="GPU-a"} 300\n',
        b'gpu_process_info{gpu="0",pid="10000",slurm_job="4242"} 1\n',
        b'gpu_process_info{gpu="0",pid="10001",namespace="ml",pod="train-0",container="t"} 1\n',
    ]
    for pid, ratio in (sm or {}).items():
        lines.append(f'gpu_process_sm_utilization_ratio{{gpu="0",pid="{pid}"}} {ratio}\n'.encode())
    return b"".join(lines)


def _round(cluster: Cluster, at: float, status: dict[str, Any], text: bytes | None) -> dict:
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
    )
    cluster.update(HOSTS, [result])
    return json.loads(cluster.views.cluster.body)


def _gpu0(document: dict) -> dict:
    return document["nodes"][0]["gpus"][0]


def test_processes_carry_attribution_and_sm_utilization() -> None:
    cluster = Cluster(thresholds=THRESHOLDS)
    document = _round(cluster, 1000.0, _status(), _metrics({10000: 0, 10001: 0.5}))
    alice, bob = _gpu0(document)["users"]
    assert {k: alice[k] for k in ("slurm_job", "pod", "namespace", "container")} == {
        "slurm_job": "4242", "pod": "", "namespace": "", "container": "",
    }  # fmt: skip
    assert alice["sm_utilization"] == 0
    assert (bob["namespace"], bob["pod"], bob["container"]) == ("ml", "train-0", "t")
    assert bob["sm_utilization"] == 0.5
    assert document["thresholds"]["idle_held_after"] == 100
    # A round without a /metrics read keeps the last attribution.
    document = _round(cluster, 1001.0, _status(), None)
    assert _gpu0(document)["users"][0]["slurm_job"] == "4242"


def test_unknown_attribution_is_empty_and_null() -> None:
    cluster = Cluster(thresholds=THRESHOLDS)
    document = _round(cluster, 1000.0, _status(), b"")
    user = _gpu0(document)["users"][0]
    assert (user["slurm_job"], user["pod"], user["sm_utilization"]) == ("", "", None)


def test_idle_held_by_process_sm_utilization() -> None:
    cluster = Cluster(thresholds=THRESHOLDS)
    idle = _metrics({10000: 0, 10001: 0})
    # The GPU as a whole looks busy (87%), but the processes report no SM activity.
    assert _gpu0(_round(cluster, 1000.0, _status(), idle))["idle_held"] is False
    gpu = _gpu0(_round(cluster, 1099.0, _status(), idle))
    assert (gpu["idle_held"], gpu["idle_held_since"]) == (False, None)
    gpu = _gpu0(_round(cluster, 1100.0, _status(), idle))
    assert (gpu["idle_held"], gpu["idle_held_since"]) == (True, 1000.0)
    assert _gpu0(_round(cluster, 1150.0, _status(), None))["idle_held"] is True
    # One process computes: the period ends, and a new one starts from scratch.
    assert _gpu0(_round(cluster, 1160.0, _status(), _metrics({10001: 0.2})))["idle_held"] is False
    assert _gpu0(_round(cluster, 1170.0, _status(), idle))["idle_held"] is False
    gpu = _gpu0(_round(cluster, 1270.0, _status(), idle))
    assert (gpu["idle_held"], gpu["idle_held_since"]) == (True, 1170.0)
    # GPU 1 holds nothing: never idle-held.
    assert _round(cluster, 1271.0, _status(), idle)["nodes"][0]["gpus"][1]["idle_held"] is False


def test_a_process_without_a_sample_counts_as_idle_where_the_gpu_reports() -> None:
    cluster = Cluster(thresholds=THRESHOLDS)
    only_one = _metrics({10000: 0})  # 10001 did not run in NVML's sampling window
    _round(cluster, 1000.0, _status(), only_one)
    assert _gpu0(_round(cluster, 1100.0, _status(), only_one))["idle_held"] is True


def test_idle_held_falls_back_to_gpu_utilization() -> None:
    cluster = Cluster(thresholds=THRESHOLDS)
    no_sm = _metrics(None)
    _round(cluster, 1000.0, _status(utilize=87), no_sm)
    assert _gpu0(_round(cluster, 1200.0, _status(utilize=87), no_sm))["idle_held"] is False
    _round(cluster, 1250.0, _status(utilize=5), no_sm)  # at the free threshold: computing
    _round(cluster, 1300.0, _status(utilize=4), no_sm)  # below it: not computing
    gpu = _gpu0(_round(cluster, 1400.0, _status(utilize=0), no_sm))
    assert (gpu["idle_held"], gpu["idle_held_since"]) == (True, 1300.0)
    unknown = _status()
    unknown["gpus"][0]["utilize"] = None  # unknown is not evidence of idleness
    assert _gpu0(_round(cluster, 1401.0, unknown, no_sm))["idle_held"] is False


def test_releasing_the_memory_ends_idle_held() -> None:
    cluster = Cluster(thresholds=THRESHOLDS)
    idle = _metrics({10000: 0, 10001: 0})
    _round(cluster, 1000.0, _status(), idle)
    assert _gpu0(_round(cluster, 1100.0, _status(), idle))["idle_held"] is True
    released = _status()
    for user in released["gpus"][0]["users"]:
        user["mem(MiB)"] = 0
    assert _gpu0(_round(cluster, 1101.0, released, idle))["idle_held"] is False
    assert _gpu0(_round(cluster, 1102.0, _status(), idle))["idle_held"] is False


def test_a_node_that_leaves_is_forgotten() -> None:
    cluster = Cluster(thresholds=THRESHOLDS)
    idle = _metrics({10000: 0, 10001: 0})
    _round(cluster, 1000.0, _status(), idle)
    cluster.update(parse_hosts("other"), [])
    assert cluster._nodes.keys() == {parse_hosts("other")[0].key}
    document = _round(cluster, 1100.0, _status(), idle)  # back: a fresh start
    assert _gpu0(document)["idle_held"] is False
    assert _gpu0(_round(cluster, 1200.0, _status(), idle))["idle_held_since"] == 1100.0
