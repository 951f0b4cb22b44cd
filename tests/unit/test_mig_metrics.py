"""MIG devices and each process's MIG device, from a node's ``/metrics``, into /api/v1/cluster.

The exporter publishes ``gpu_mig_info{gpu,uuid,mig_uuid,gi,ci,profile}``, the MIG memory gauges
and ``mig_uuid`` on ``gpu_process_info``; the parse keeps them per GPU index and per (GPU index,
pid), bounded and without ever raising, and the cluster view lists them under each GPU.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.nodes import legacy_status, metrics_text
from status_api.cluster import Cluster, Thresholds
from status_api.hosts import parse_hosts
from status_api.nodemetrics import (
    MAX_GPUS,
    MAX_LABEL,
    MAX_MIGS_PER_GPU,
    MigDevice,
    parse_metrics,
)
from status_api.poller import PollResult

pytestmark = pytest.mark.unit

GIB = 1 << 30
WHERE = 'gpu="0",uuid="GPU-a"'
# As the exporter writes them (its order: info lines first), devices listed out of order.
EXPOSITION = (
    b"# TYPE gpu_mig_info gauge\n"
    b'gpu_mig_info{gpu="0",uuid="GPU-a",mig_uuid="MIG-2",gi="2",ci="0",profile="1g.10gb"} 1\n'
    b'gpu_mig_info{gpu="0",uuid="GPU-a",mig_uuid="MIG-1",gi="1",ci="0",profile="3g.40gb"} 1\n'
    b'gpu_mig_info{gpu="0",uuid="GPU-a",mig_uuid="MIG-1b",gi="1",ci="1",profile="1c.3g.40gb"} 1\n'
    b"# TYPE gpu_mig_memory_used_bytes gauge\n"
    b'gpu_mig_memory_used_bytes{gpu="0",uuid="GPU-a",mig_uuid="MIG-1",gi="1",ci="0"} 5368709120\n'
    b'gpu_mig_memory_used_bytes{gpu="0",uuid="GPU-a",mig_uuid="MIG-2",gi="2",ci="0"} 1048575\n'
    b"# TYPE gpu_mig_memory_total_bytes gauge\n"
    b'gpu_mig_memory_total_bytes{gpu="0",uuid="GPU-a",mig_uuid="MIG-1",gi="1",ci="0"} '
    b"4.294967296e+10\n"
    b'gpu_mig_memory_total_bytes{gpu="0",uuid="GPU-a",mig_uuid="MIG-2",gi="2",ci="0"} 10737418240\n'
    b'gpu_process_info{gpu="0",uuid="GPU-a",pid="10000",user="alice",mig_uuid="MIG-2",'
    b'slurm_job="4242",container="",pod="",namespace=""} 1\n'
    b'gpu_process_info{gpu="1",uuid="GPU-b",pid="10100",user="bob",mig_uuid="",'
    b'slurm_job="",container="",pod="",namespace=""} 1\n'
)


def test_mig_devices_per_gpu_ordered_with_memory_in_mib() -> None:
    metrics = parse_metrics(EXPOSITION)
    assert metrics.migs == {
        0: [
            MigDevice("MIG-1", 1, 0, "3g.40gb", 5120, 40960),
            MigDevice("MIG-1b", 1, 1, "1c.3g.40gb", None, None),
            MigDevice("MIG-2", 2, 0, "1g.10gb", 0, 10240),  # 1 MiB less one byte: 0 MiB
        ]
    }
    assert metrics.processes[(0, 10000)].mig_uuid == "MIG-2"
    assert metrics.processes[(0, 10000)].slurm_job == "4242"
    assert metrics.processes[(1, 10100)].mig_uuid == ""


def test_a_memory_line_without_its_info_line_still_names_the_device() -> None:
    text = (
        b'gpu_mig_memory_total_bytes{gpu="3",mig_uuid="MIG-x",gi="",ci=""} 1073741824\n'
        b'gpu_mig_memory_used_bytes{gpu="3",mig_uuid="MIG-y",gi="4",ci="0"} 0\n'
    )
    assert parse_metrics(text).migs == {
        3: [MigDevice("MIG-y", 4, 0, "", 0, None), MigDevice("MIG-x", None, None, "", None, 1024)]
    }


def test_hostile_mig_lines_are_skipped_or_bounded() -> None:
    long = "p" * (MAX_LABEL * 10)
    text = b"".join(
        [
            # No device uuid, no GPU index, a GPU index that is not a number: no device.
            b'gpu_mig_info{gpu="0",mig_uuid="",gi="1",ci="0",profile="x"} 1\n',
            b'gpu_mig_info{mig_uuid="MIG-n",gi="1",ci="0"} 1\n',
            b'gpu_mig_info{gpu="-1",mig_uuid="MIG-n",gi="1",ci="0"} 1\n',
            # Ids that are not numbers; bad values: NaN, negative, infinite, absurd memory.
            b'gpu_mig_info{gpu="0",mig_uuid="MIG-i",gi="x",ci="1e3",profile="1g.10gb"} 1\n',
            b'gpu_mig_info{gpu="0",mig_uuid="MIG-h",gi="1",ci="0"} 1\n',
            b'gpu_mig_memory_used_bytes{gpu="0",mig_uuid="MIG-h",gi="1",ci="0"} NaN\n',
            b'gpu_mig_memory_total_bytes{gpu="0",mig_uuid="MIG-h",gi="1",ci="0"} -5\n',
            b'gpu_mig_memory_total_bytes{gpu="0",mig_uuid="MIG-h",gi="1",ci="0"} +Inf\n',
            b'gpu_mig_memory_used_bytes{gpu="0",mig_uuid="MIG-h",gi="1",ci="0"} 1e300\n',
            # Look-alikes: a longer family name, one not at a line start.
            b'gpu_mig_info_extra{gpu="0",mig_uuid="MIG-z"} 1\n',
            b'gpu_up{gpu="0",note="gpu_mig_info{gpu=\\"0\\",mig_uuid=\\"MIG-q\\"} 1"} 1\n',
            # Escapes, invalid UTF-8 and an overlong profile and uuid.
            b'gpu_mig_info{gpu="0",mig_uuid="MIG-\\"e\\"",gi="5",ci="0",profile="'
            + long.encode()
            + b'"} 1\n',
            b'gpu_mig_info{gpu="0",mig_uuid="MIG-\xff",gi="6",ci="0",profile="\xfe"} 1\n',
            f'gpu_mig_info{{gpu="0",mig_uuid="{"u" * 5000}",gi="7",ci="0"}} 1\n'.encode(),
            b'gpu_process_info{gpu="0",pid="1",mig_uuid="' + b"m" * 5000 + b'"} 1\n',
        ]
    )
    metrics = parse_metrics(text)
    devices = {device.uuid: device for device in metrics.migs[0]}
    assert set(devices) == {"MIG-i", "MIG-h", 'MIG-"e"', "MIG-\ufffd", "u" * MAX_LABEL}
    assert devices["MIG-i"] == MigDevice("MIG-i", None, None, "1g.10gb", None, None)
    assert devices["MIG-h"] == MigDevice("MIG-h", 1, 0, "", None, None)
    assert metrics.migs[0][-1].uuid == "MIG-i"  # unknown ids last
    assert devices['MIG-"e"'].profile == "p" * MAX_LABEL
    assert devices["MIG-\ufffd"].profile == "\ufffd"
    assert metrics.processes[(0, 1)].mig_uuid == "m" * MAX_LABEL
    assert list(metrics.migs) == [0]


def test_mig_devices_are_bounded_per_gpu_and_in_gpus() -> None:
    flood = b"".join(
        f'gpu_mig_info{{gpu="0",mig_uuid="MIG-{n}",gi="{n}",ci="0"}} 1\n'.encode()
        for n in range(MAX_MIGS_PER_GPU + 50)
    )
    assert len(parse_metrics(flood).migs[0]) == MAX_MIGS_PER_GPU
    many_gpus = b"".join(
        f'gpu_mig_info{{gpu="{n}",mig_uuid="MIG-{n}",gi="1",ci="0"}} 1\n'.encode()
        for n in range(MAX_GPUS + 10)
    )
    assert len(parse_metrics(many_gpus).migs) == MAX_GPUS


@settings(max_examples=200, deadline=None)
@given(text=st.binary(max_size=300))
def test_property_mig_parsing_never_raises(text: bytes) -> None:
    head = b'gpu_mig_info{gpu="0",mig_uuid="MIG-a",gi="1",ci="0",profile="7g.80gb"} 1\n'
    metrics = parse_metrics(head + text)
    assert metrics.migs[0][0].uuid == "MIG-a"


# ---- the cluster view ------------------------------------------------------------------------

HOSTS = parse_hosts("gpu-a")
THRESHOLDS = Thresholds(stale_after=1e9, offline_after=1e9)


def _document(cluster: Cluster, text: bytes | None, at: float = 1000.0) -> dict:
    status = legacy_status("gpu-a", gpus=2, users_per_gpu=1)
    metrics = parse_metrics(text) if text is not None else None
    result = PollResult(
        HOSTS[0],
        status,
        "",
        at,
        0.01,
        *(
            (None,) * 5
            if metrics is None
            else (metrics.power, metrics.processes, metrics.uuids, metrics.health, metrics.migs)
        ),
    )
    cluster.update(HOSTS, [result])
    return json.loads(cluster.views.cluster.body)


def test_cluster_view_lists_mig_devices_and_each_process_mig_uuid() -> None:
    status = legacy_status("gpu-a", gpus=2, users_per_gpu=1)
    (pid,) = (user["pid"] for user in status["gpus"][0]["users"])
    text = metrics_text(
        status,
        attribution={pid: {"mig_uuid": "MIG-b", "slurm_job": "7"}},
        health={0: {"gpu_mig_mode": 1, "gpu_mig_mode_pending": 1}},
        mig={
            0: [
                {"uuid": "MIG-b", "gi": 2, "ci": 0, "profile": "1g.10gb",
                 "memory_used_bytes": 3 * GIB, "memory_total_bytes": 10 * GIB},
                {"uuid": "MIG-a", "gi": 1, "ci": 0, "profile": "3g.40gb",
                 "memory_total_bytes": 40 * GIB},
            ]
        },
    )  # fmt: skip
    cluster = Cluster(thresholds=THRESHOLDS)
    gpu0, gpu1 = _document(cluster, text)["nodes"][0]["gpus"]
    assert gpu0["mig"] == [
        {"uuid": "MIG-a", "gpu_instance": 1, "compute_instance": 0, "profile": "3g.40gb",
         "memory_used_mib": None, "memory_total_mib": 40960},
        {"uuid": "MIG-b", "gpu_instance": 2, "compute_instance": 0, "profile": "1g.10gb",
         "memory_used_mib": 3072, "memory_total_mib": 10240},
    ]  # fmt: skip
    assert [user["mig_uuid"] for user in gpu0["users"]] == ["MIG-b"]
    assert gpu0["users"][0]["slurm_job"] == "7"
    assert gpu1["mig"] == [] and gpu1["users"] == []
    # A round without a /metrics read keeps the last MIG devices; a read without them clears.
    assert _document(cluster, None, 1001.0)["nodes"][0]["gpus"][0]["mig"] == gpu0["mig"]
    gpu0 = _document(cluster, b"", 1002.0)["nodes"][0]["gpus"][0]
    assert (gpu0["mig"], gpu0["users"][0]["mig_uuid"]) == ([], "")
    legacy = cluster.views.legacy.body
    assert b"mig" not in legacy.lower()  # the legacy view is frozen
