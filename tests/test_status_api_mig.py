"""MIG devices through the real ``gpu-status-api``: over fake nodes that serve MIG lines in
``/metrics``, and over a real ``gpu-exporter`` on the fake NVML with a GPU in MIG mode.

Each GPU of /api/v1/cluster lists its MIG devices (``mig``) and each process names the MIG device
it runs in (``mig_uuid``); the legacy ``/get-status`` stays as it was.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis

from simulator.fakenvml import scenario as fake
from simulator.nodes import FakeNodes, legacy_status
from tests.support.status_service import (  # noqa: F401 - fixture
    PASSWORD,
    node,
    status_service_factory,
)

GIB = 1 << 30
SPEC = Path(__file__).resolve().parents[1] / "status_api" / "openapi.yaml"


def test_mig_devices_over_fake_nodes(status_service_factory) -> None:  # noqa: F811
    with FakeNodes(["ok"], gpus=2) as nodes:
        status = legacy_status("fake0", gpus=2, users_per_gpu=2)
        first, second = (user["pid"] for user in status["gpus"][0]["users"])
        nodes.set_status(
            0,
            status,
            attribution={first: {"mig_uuid": "MIG-b"}, second: {"mig_uuid": "MIG-a"}},
            health={0: {"gpu_mig_mode": 1, "gpu_mig_mode_pending": 1}},
            mig={
                0: [
                    {"uuid": "MIG-b", "gi": 2, "ci": 0, "profile": "1g.10gb",
                     "memory_used_bytes": GIB, "memory_total_bytes": 10 * GIB},
                    {"uuid": "MIG-a", "gi": 1, "ci": 0, "profile": "3g.40gb",
                     "memory_used_bytes": 2 * GIB, "memory_total_bytes": 40 * GIB},
                ]
            },
        )  # fmt: skip
        (line,) = nodes.hosts_lines()
        service = status_service_factory([line], "--power-interval", "0")
        document = service.wait_for(
            lambda d: bool(node(d, line)["gpus"][0]["mig"]), what="MIG devices from /metrics"
        )
        gpu0, gpu1 = node(document, line)["gpus"]
        assert gpu0["mig"] == [
            {"uuid": "MIG-a", "gpu_instance": 1, "compute_instance": 0, "profile": "3g.40gb",
             "memory_used_mib": 2048, "memory_total_mib": 40960},
            {"uuid": "MIG-b", "gpu_instance": 2, "compute_instance": 0, "profile": "1g.10gb",
             "memory_used_mib": 1024, "memory_total_mib": 10240},
        ]  # fmt: skip
        assert [(u["pid"], u["mig_uuid"]) for u in gpu0["users"]] == [
            (first, "MIG-b"),
            (second, "MIG-a"),
        ]
        assert (gpu1["mig"], gpu1["users"]) == ([], [])
        described = schemathesis.openapi.from_path(SPEC)
        described["/api/v1/cluster"]["GET"].validate_response(service.get("/api/v1/cluster"))
        legacy = service.get("/get-status")
        assert b"mig" not in legacy.content.lower()  # legacy view unchanged
        described["/get-status"]["GET"].validate_response(legacy)


def test_mig_devices_from_a_real_exporter(
    exporter_factory,
    worker_pids,
    status_service_factory,  # noqa: F811
) -> None:
    pid, plain_pid = worker_pids(2)
    mig = fake.make_mig_gpu(0, profiles=("3g.40gb", "1g.10gb"))
    mig.migs[0].memory_used = 5 * GIB
    mig.processes = [fake.FakeProcess(pid, GIB, gpu_instance=2, compute_instance=0)]
    plain = fake.make_gpu(1, processes=[fake.FakeProcess(plain_pid, 2 * GIB)])
    exporter = exporter_factory(fake.FakeScenario(gpus=[mig, plain]), password=PASSWORD)
    line = f"127.0.0.1:{exporter.port}"
    service = status_service_factory([line], "--power-interval", "0")
    document = service.wait_for(
        lambda d: bool(node(d, line)["gpus"] and node(d, line)["gpus"][0]["mig"]),
        what="MIG devices from the exporter",
    )
    gpu0, gpu1 = node(document, line)["gpus"]
    first, second = fake.mig_uuid(0, 0), fake.mig_uuid(0, 1)
    assert gpu0["mig"] == [
        {"uuid": first, "gpu_instance": 1, "compute_instance": 0, "profile": "3g.40gb",
         "memory_used_mib": 5120, "memory_total_mib": 40960},
        {"uuid": second, "gpu_instance": 2, "compute_instance": 0, "profile": "1g.10gb",
         "memory_used_mib": 0, "memory_total_mib": 10240},
    ]  # fmt: skip
    assert [(u["pid"], u["mem"], u["mig_uuid"]) for u in gpu0["users"]] == [(pid, 1024, second)]
    assert gpu1["mig"] == []
    assert [(u["pid"], u["mig_uuid"]) for u in gpu1["users"]] == [(plain_pid, "")]
    described = schemathesis.openapi.from_path(SPEC)
    described["/api/v1/cluster"]["GET"].validate_response(service.get("/api/v1/cluster"))
