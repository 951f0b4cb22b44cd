"""GPU health through the real ``gpu-status-api`` over fake nodes that serve health in /metrics.

A lost GPU (no readings, ``gpu_up`` 0), a GPU with a recent XID 48, one with a row remap
pending, one with an old XID, and an old node_info.py (no ``/metrics``) whose GPU gives no
readings: each
GPU's ``health`` in /api/v1/cluster, the free GPUs and the summary counts.
"""

from __future__ import annotations

import time

from simulator.nodes import FakeNodes, legacy_status
from status_api.health import LOST_REASON, LOST_UNCONFIRMED_REASON
from tests.support.old_node import OldNode
from tests.support.status_service import PASSWORD, node

NO_READINGS = {"use_mem": None, "tot_mem": None, "utilize": None, "temp": None}


def test_health_states_reasons_and_counts(status_service_factory) -> None:
    old = legacy_status("gpu-old", gpus=1, users_per_gpu=0)
    old["gpus"][0].update(NO_READINGS)
    with FakeNodes(["ok"], gpus=4) as fake, OldNode(old, password=PASSWORD) as old_node:
        status = legacy_status("fake0", gpus=4, users_per_gpu=0)
        for gpu in status["gpus"]:
            gpu["utilize"] = 0  # free by its readings alone
        status["gpus"][0].update(NO_READINGS)
        now = time.time()
        fake.set_status(
            0,
            status,
            health={
                0: {"gpu_up": 0, "gpu_last_xid": 79, "gpu_last_xid_timestamp_seconds": now - 5},
                1: {"gpu_last_xid": 48, "gpu_last_xid_timestamp_seconds": now - 5},
                2: {"gpu_remapped_rows_pending": 1},
                3: {"gpu_last_xid": 79, "gpu_last_xid_timestamp_seconds": now - 120},
            },
        )
        (first,) = fake.hosts_lines()
        second = old_node.entry
        service = status_service_factory(
            [first, second], "--power-interval", "0", "--xid-recent", "60"
        )
        document = service.wait_for(
            lambda d: node(d, first)["gpus"][0]["health"]["state"] == "lost",
            what="GPU 0 lost",
        )
        gpus = node(document, first)["gpus"]
        assert [gpu["health"]["state"] for gpu in gpus] == ["lost", "sick", "warning", "ok"]
        clock = time.strftime("%H:%M", time.localtime(now - 5))
        assert gpus[0]["health"]["reasons"] == [
            LOST_REASON,
            f"XID 79 at {clock} (fell off the bus)",
        ]
        assert gpus[1]["health"]["reasons"] == [f"XID 48 at {clock} (double-bit ECC error)"]
        assert gpus[2]["health"]["reasons"] == ["memory row remap pending: reset the GPU"]
        assert gpus[3]["health"] == {"state": "ok", "reasons": []}  # XID older than 60 s
        assert [gpu["free"] for gpu in gpus] == [False, False, True, True]

        (old_gpu,) = node(document, second)["gpus"]
        assert old_gpu["health"] == {"state": "lost", "reasons": [LOST_UNCONFIRMED_REASON]}
        assert old_gpu["free"] is False

        summary = document["summary"]
        assert (summary["gpus_total"], summary["gpus_free"]) == (5, 2)
        assert (summary["gpus_lost"], summary["gpus_sick"], summary["gpus_warning"]) == (2, 1, 1)
        assert document["thresholds"]["xid_recent"] == 60
        assert b"health" not in service.get("/get-status").content  # legacy view unchanged
