"""The demo's alert receiver: Alertmanager's webhook notifications become lines of output, and
anything else sent to its port gets a clear 4xx."""

from __future__ import annotations

import io
import json

import pytest
import requests

from simulator.demo.alerts import MAX_BODY_BYTES, alert_line, running_alert_printer

pytestmark = pytest.mark.unit

NOTIFICATION = {
    "version": "4",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "GpuHot", "severity": "warning", "node": "dgx-a"},
            "annotations": {"summary": "GPU 0 on dgx-a is at 93 °C"},
        },
        {"status": "resolved", "labels": {"alertname": "GpuLost", "severity": "critical"}},
    ],
}


def test_each_alert_of_a_notification_is_printed():
    out = io.StringIO()
    with running_alert_printer(out=out) as url:
        response = requests.post(url, json=NOTIFICATION, timeout=5)
    assert response.status_code == 200
    assert out.getvalue().splitlines() == [
        "alert firing: GpuHot (warning) GPU 0 on dgx-a is at 93 °C",
        "alert resolved: GpuLost (critical)",
    ]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (json.dumps({"alerts": "GpuHot"}).encode(), 400),
        (json.dumps({"status": "firing"}).encode(), 400),
        (b"x" * (MAX_BODY_BYTES + 1), 413),
    ],
)
def test_other_bodies_get_a_clear_error_and_print_nothing(body, status):
    out = io.StringIO()
    with running_alert_printer(out=out) as url:
        response = requests.post(url, data=body, timeout=5)
    assert response.status_code == status
    assert out.getvalue() == ""


def test_malformed_alert_entries_do_not_stop_the_others():
    assert alert_line("GpuHot") == "alert: (malformed)"
    assert alert_line({"labels": "x", "annotations": 3}) == "alert ?: ? (?)"
