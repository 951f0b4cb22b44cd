"""Alerts travel from a real Prometheus through a real Alertmanager to a webhook.

Two real exporters on the fake NVML (tests/support/cluster.py), Prometheus with the shipped rules
(``for:`` shortened) sending to Alertmanager with the shipped ``prometheus/alertmanager.yml``
(webhook url and grouping delays replaced), and a webhook receiver in this process recording
what Alertmanager posts. Checked: a hot GPU's GpuHot arrives with its labels and summary; a lost
GPU's GpuLost arrives, and a symptom alert of that same GPU is held back by the inhibit rule.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.alertmanager import running_alertmanager
from simulator.fakenvml import scenario as fake
from tests.support.cluster import HOT_CELSIUS, Cluster, monitored_cluster, node_a
from tests.support.webhook import Webhook, firing

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

LOST_GPU = "3"  # GPU 3 of node localhost is lost in the cluster's scenario
XID_METRIC = "gpu_xid_errors_total"


@pytest.fixture
def alerting(
    exporter_factory, worker_pids, tmp_path: Path
) -> Iterator[tuple[Cluster, Webhook, Any]]:
    """The cluster, Prometheus and Alertmanager, plus a stand-in symptom of the lost GPU.

    The fake cannot report a lost GPU as hot (a lost GPU answers nothing), so an extra rule
    raises GpuHot for every lost GPU: the alert, with the labels Prometheus gives it, that the
    inhibit rule must hold back while GpuLost fires for the same node and GPU. It waits longer
    than GpuLost's shortened ``for:``, so GpuLost is at Alertmanager first: an alert that was
    already notified before the loss is not taken back.
    """
    symptom = tmp_path / "symptom.yml"
    rule = {
        "alert": "GpuHot",
        "expr": "gpu_up == 0",
        "for": "12s",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "stand-in symptom of GPU {{ $labels.gpu }}"},
    }
    symptom.write_text(yaml.safe_dump({"groups": [{"name": "symptom", "rules": [rule]}]}))
    with (
        Webhook() as webhook,
        running_alertmanager(tmp_path / "alertmanager", webhook_url=webhook.url) as alertmanager,
        monitored_cluster(
            exporter_factory,
            worker_pids,
            tmp_path,
            alert_for="4s",
            alertmanagers=[alertmanager.address],
            extra_rule_files=[symptom],
        ) as cluster,
    ):
        yield cluster, webhook, alertmanager


def test_hot_gpu_reaches_the_webhook_and_a_lost_gpu_inhibits_its_symptoms(alerting):
    cluster, webhook, alertmanager = alerting
    cluster.set_node_a(hot=True)

    hot = webhook.wait_for(firing("GpuHot", "localhost", "0"))
    labels = hot["labels"]
    assert labels["severity"] == "warning"
    assert labels["uuid"] == cluster.scenarios["localhost"].gpus[0].uuid
    assert hot["annotations"]["summary"] == f"GPU 0 on localhost is at {HOT_CELSIUS} °C"

    lost = webhook.wait_for(firing("GpuLost", "localhost", LOST_GPU))
    assert lost["labels"]["severity"] == "critical"
    assert lost["annotations"]["summary"] == f"GPU {LOST_GPU} on localhost is lost"

    # Alertmanager has the symptom and holds it back because of GpuLost ...
    deadline = time.monotonic() + 30
    symptom: list[dict[str, Any]] = []
    while not symptom and time.monotonic() < deadline:
        symptom = [
            alert
            for alert in alertmanager.alerts()
            if alert["labels"]["alertname"] == "GpuHot" and alert["labels"]["gpu"] == LOST_GPU
        ]
        time.sleep(0.2)
    assert symptom, f"Prometheus never sent the stand-in symptom:\n{alertmanager.log()[-2000:]}"
    assert symptom[0]["status"]["state"] == "suppressed"
    assert symptom[0]["status"]["inhibitedBy"], symptom[0]
    # ... and never sends it, though the delays are 1 s and GPU 3 had several by now.
    time.sleep(3)
    assert not [a for a in webhook.alerts() if firing("GpuHot", "localhost", LOST_GPU)(a)]


def test_xid_reaches_the_webhook(alerting, exporter_factory):
    cluster, webhook, _ = alerting
    exporter = cluster.exporters["localhost"]
    scenario = node_a(cluster.workers["localhost"])
    gpus = list(scenario.gpus)
    gpus[1] = replace(gpus[1], xids=[fake.FakeXid(79)])  # GPU 1 falls off the bus
    scenario.gpus = gpus
    exporter.set_scenario(scenario)
    deadline = time.monotonic() + 10
    while XID_METRIC not in exporter.metrics():
        if time.monotonic() > deadline:
            pytest.skip(f"the exporter does not export {XID_METRIC} (XID events) yet")
        time.sleep(0.2)

    alert = webhook.wait_for(firing("GpuXidRebootOrReplace", "localhost", "1"))
    assert alert["labels"]["xid"] == "79"
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["uuid"] == gpus[1].uuid
    assert "XID 79" in alert["annotations"]["summary"]
