"""rules/efficiency.yml on a real Prometheus, scraping a real exporter with GPM on the fake NVML.

The promtool tests (prometheus/tests/efficiency_test.yml) hold the arithmetic; this checks that
the rules match the label sets the exporter really publishes: processes outside MIG (an empty
``mig_uuid``, which Prometheus drops), MIG processes and ``gpu_mig_*`` figures joined on
``mig_uuid``, a GPU without GPM, and GpuLowSmActivity firing on the one GPU that earns it.
"""

from __future__ import annotations

import getpass
from dataclasses import replace

import pytest

from simulator.fakenvml import scenario as fake
from simulator.prometheus import running_prometheus
from tests.support.cluster import GIB, write_targets

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]


def gpm_node(workers: list[int]) -> fake.FakeScenario:
    """GPU 0: busy by utilization, idle by SM activity; GPU 1: no GPM; GPU 2: MIG."""
    looks_busy = fake.make_gpu(
        0,
        processes=[fake.FakeProcess(workers[0], 2 * GIB)],
        memory_used=2 * GIB,
        utilization_gpu=90,
        gpm="supported",
        gpm_metrics=fake.FakeGpmMetrics(sm_active=6.25, tensor_active=0),
    )
    without_gpm = fake.make_gpu(
        1, processes=[fake.FakeProcess(workers[1], GIB)], memory_used=GIB, utilization_gpu=90
    )
    mig = fake.make_mig_gpu(2, profiles=("3g.40gb", "1g.10gb"), memory_used=GIB)
    mig.migs[1].memory_used = GIB
    mig.processes = [fake.FakeProcess(workers[2], GIB, gpu_instance=2, compute_instance=0)]
    mig = replace(
        mig,
        gpm="supported",
        # the whole GPU's figures, which the MIG device's holder must not get
        gpm_metrics=fake.FakeGpmMetrics(sm_active=12.5, tensor_active=12.5),
        gpm_mig_metrics={2: fake.FakeGpmMetrics(sm_active=50, tensor_active=25)},
    )
    return fake.FakeScenario(gpus=[looks_busy, without_gpm, mig])


def by(result: list[dict], *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample["metric"].get(label, "") for label in labels): float(sample["value"][1])
        for sample in result
    }


def test_efficiency_rules_and_alert_on_a_real_prometheus(exporter_factory, worker_pids, tmp_path):
    user = getpass.getuser()
    scenario = gpm_node(worker_pids(3))
    mig_uuid = scenario.gpus[2].migs[1].uuid
    exporter = exporter_factory(scenario)
    targets = write_targets(tmp_path, {"localhost": exporter.port})
    with running_prometheus(
        tmp_path / "prometheus", targets_file=targets, alert_for="2s"
    ) as prometheus:
        held = prometheus.wait_for(
            "node_gpu_user:gpu_sm_active_ratio:held", lambda result: len(result) == 2
        )
        assert by(held, "gpu", "mig_uuid", "user") == {
            ("0", "", user): 0.0625,
            ("2", mig_uuid, user): 0.5,
        }
        assert by(prometheus.query("user:gpu_gpm_held:count"), "user") == {(user,): 2}
        assert by(prometheus.query("user:gpu_sm_active_ratio:avg"), "user") == {(user,): 0.28125}
        assert by(prometheus.query("user:gpu_tensor_active_ratio:avg"), "user") == {(user,): 0.125}

        # The counters grow at the summed figures: 0.5625 SM-active seconds per second.
        prometheus.wait_for("user:gpu_sm_active_seconds:total > 1", lambda result: len(result) == 1)
        mean = prometheus.query(
            "increase(user:gpu_sm_active_seconds:total[5s])"
            " / increase(user:gpu_gpm_held_seconds:total[5s])"
        )
        assert by(mean, "user") == {(user,): pytest.approx(0.28125)}

        firing = prometheus.wait_for(
            'ALERTS{alertname="GpuLowSmActivity", alertstate="firing"}',
            lambda result: len(result) >= 1,
        )
        assert by(firing, "node", "gpu", "uuid", "user", "severity") == {
            ("localhost", "0", fake.gpu_uuid(0), user, "info"): 1
        }
