"""The example Alertmanager configuration passes amtool and fits the alerts it routes.

amtool is the real thing (Debian's ``prometheus-alertmanager`` package).
"""

from __future__ import annotations

import pytest

from simulator.alertmanager import ALERTMANAGER_CONFIG, amtool, write_config
from simulator.prometheus import PROMETHEUS_DIR, load_yaml

ALERTS = {
    rule["alert"]
    for group in load_yaml(PROMETHEUS_DIR / "rules" / "alerts.yml")["groups"]
    for rule in group["rules"]
    if "alert" in rule
}


def test_amtool_check_config():
    output = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert "SUCCESS" in output, output


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=GpuLost", "severity=critical"], "gpu-critical"),
        (["alertname=GpuHot", "severity=warning"], "gpu-warning"),
        (["alertname=GpuLowSmActivity", "severity=info"], "gpu-warning"),
        (["alertname=Other"], "gpu-warning"),
    ],
)
def test_routes_by_severity(labels, receiver):
    output = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
    assert output.splitlines()[0].strip() == receiver, output


def test_groups_by_node_and_gpu():
    assert load_yaml(ALERTMANAGER_CONFIG)["route"]["group_by"] == ["node", "gpu"]


def test_inhibit_rules_name_existing_alerts_and_match_node_and_gpu():
    rules = load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]
    for rule in rules:
        assert rule["equal"] == ["node", "gpu"]
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            name, _, pattern = matcher.partition("=")
            assert name.strip().rstrip("=~") == "alertname", matcher
            names = pattern.lstrip("~").strip().strip('"').split("|")
            assert set(names) <= ALERTS, f"unknown alerts in {matcher}"
    lost = [rule for rule in rules if rule["source_matchers"] == ['alertname = "GpuLost"']]
    (targets,) = lost[0]["target_matchers"]
    assert {"GpuHot", "GpuThrottled", "GpuIdleButHeld"} <= set(targets.split('"')[1].split("|"))


def test_test_config_replaces_every_webhook_url(tmp_path):
    path = write_config(tmp_path, webhook_url="http://127.0.0.1:9/hook")
    config = load_yaml(path)
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert urls and set(urls) == {"http://127.0.0.1:9/hook"}
    assert config["route"]["group_wait"] == "1s"
    assert "SUCCESS" in amtool("check-config", str(path))
