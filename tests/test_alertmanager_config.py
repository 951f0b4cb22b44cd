"""The example Alertmanager configuration passes amtool and fits the alerts it routes.

amtool is the real thing (Debian's ``prometheus-alertmanager`` package): it checks the file and
its templates, tests the routing tree, renders the owner mail from the shipped templates, and
accepts the working hours the file documents.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.alertmanager import (
    ALERTMANAGER_CONFIG,
    NO_SMTP,
    OWNER_MAIL_HOURS,
    TEMPLATES,
    amtool,
    set_owner_mail_hours,
    write_config,
)
from simulator.prometheus import PROMETHEUS_DIR, load_yaml

ALERTS = {
    rule["alert"]
    for group in load_yaml(PROMETHEUS_DIR / "rules" / "alerts.yml")["groups"]
    for rule in group["rules"]
    if "alert" in rule
}
# Named in alertmanager.yml before it exists: the low-efficiency alert, mailed like idle GPUs.
PLANNED = {"GpuLowSmActivity"}
OWNER_ALERTS = {"GpuIdleButHeld", "GpuLowSmActivity"}
OWNER_AND_ADMINS = "gpu-owner-mail,gpu-warning"


def routes_test(*labels: str) -> str:
    """The receivers ``amtool config routes test`` picks for an alert with ``labels``."""
    output = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
    return output.splitlines()[0].strip()


def owner_route() -> dict[str, Any]:
    (route,) = [
        r for r in load_yaml(ALERTMANAGER_CONFIG)["route"]["routes"]
        if r["receiver"] == "gpu-owner-mail"
    ]  # fmt: skip
    return route


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
    assert routes_test(*labels) == receiver


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        # the owner is mailed, and the admins' receiver still gets the alert
        (["user=alice", "alertname=GpuIdleButHeld", "severity=warning"], OWNER_AND_ADMINS),
        (["user=alice", "alertname=GpuLowSmActivity", "severity=warning"], OWNER_AND_ADMINS),
        # an unknown owner (no user label) cannot be mailed: the admins alone
        (["alertname=GpuIdleButHeld", "severity=warning"], "gpu-warning"),
        # other alerts of a user's GPU are not the user's business
        (["user=alice", "alertname=GpuHot", "severity=warning"], "gpu-warning"),
        (["user=alice", "alertname=GpuLost", "severity=critical"], "gpu-critical"),
    ],
)
def test_routes_idle_gpus_to_their_owner(labels, receivers):
    assert routes_test(*labels) == receivers


def test_groups_by_node_and_gpu():
    assert load_yaml(ALERTMANAGER_CONFIG)["route"]["group_by"] == ["node", "gpu"]


def test_owner_mail_is_one_per_user_repeated_every_4h_in_the_owner_mail_hours():
    route = owner_route()
    assert route["group_by"] == ["user"]
    assert route["repeat_interval"] == "4h"
    assert route["continue"] is True
    assert route["active_time_intervals"] == [OWNER_MAIL_HOURS]
    names = [t["name"] for t in load_yaml(ALERTMANAGER_CONFIG)["time_intervals"]]
    assert OWNER_MAIL_HOURS in names
    alertname, user = route["matchers"]
    assert set(alertname.split('"')[1].split("|")) == OWNER_ALERTS
    assert user == 'user =~ ".+"'


def matcher_names(matcher: str) -> set[str]:
    name, _, pattern = matcher.partition("=")
    assert name.strip().rstrip("=~") == "alertname", matcher
    return set(pattern.lstrip("~").strip().strip('"').split("|"))


def test_inhibit_rules_name_existing_alerts():
    for rule in load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            assert matcher_names(matcher) <= ALERTS | PLANNED, f"unknown alerts in {matcher}"


def test_a_lost_gpu_inhibits_its_symptoms_on_the_same_node_and_gpu():
    rules = load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]
    lost = [rule for rule in rules if rule["source_matchers"] == ['alertname = "GpuLost"']]
    assert lost[0]["equal"] == ["node", "gpu"]
    (targets,) = lost[0]["target_matchers"]
    assert {"GpuHot", "GpuThrottled", "GpuIdleButHeld"} <= matcher_names(targets)


def test_an_exporter_down_inhibits_owner_mail_of_its_instance():
    rules = load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]
    down = [r for r in rules if "GpuExporterDown" in matcher_names(r["source_matchers"][0])]
    assert len(down) == 1, rules
    assert down[0]["equal"] == ["instance"]
    assert matcher_names(down[0]["target_matchers"][0]) == OWNER_ALERTS


def render(template: str, data: dict[str, Any], tmp_path: Path) -> str:
    """``template`` of the shipped templates rendered by amtool for ``data``."""
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data), encoding="utf-8")
    return amtool(
        "template", "render", f"--template.glob={TEMPLATES}/*.tmpl",
        f"--template.data={data_file}", f'--template.text={{{{ template "{template}" . }}}}',
    )  # fmt: skip


def test_shipped_templates_render_the_owner_mail(tmp_path):
    alert = {
        "status": "firing",
        "labels": {
            "alertname": "GpuIdleButHeld", "node": "n1", "gpu": "3", "uuid": "GPU-3",
            "pid": "4242", "user": "alice", "slurm_job": "42",
        },
        "annotations": {
            "summary": "GPU 3 on n1 is held by alice (Slurm job 42) but idle",
            "description": "Process 4242 of user alice holds 1GiB of memory on GPU 3.",
            "idle_since": "2026-01-05 09:12 UTC",
        },
        "startsAt": "2026-01-05T10:12:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
    }  # fmt: skip
    data = {
        "receiver": "gpu-owner-mail", "status": "firing", "alerts": [alert],
        "groupLabels": {"user": "alice"}, "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"], "externalURL": "http://alertmanager:9093",
    }  # fmt: skip
    assert render("gpu.site.owner_address", data, tmp_path) == "alice@example.org"
    assert render("gpu.site.admins", data, tmp_path) == "gpu-admins@example.org"
    assert render("gpu.owner.subject", data, tmp_path) == alert["annotations"]["summary"]
    text = render("gpu.owner.text", data, tmp_path)
    assert "- node n1, GPU 3 (uuid GPU-3)\n" in text, text
    assert "  process 4242, Slurm job 42, idle since 2026-01-05 09:12 UTC\n" in text, text
    assert "\nhttp://gpu-status.example.org:7070/#user=alice\n" in text, text


def documented_working_hours() -> list[dict[str, Any]]:
    """The working-hours example in the comment above time_intervals in alertmanager.yml."""
    text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
    block = text.split("\ntime_intervals:", 1)[0].rsplit("\n# When owners are mailed", 1)[1]
    example = [line[1:] for line in block.splitlines() if re.match(r"#\s{3}", line)]
    assert example, block
    intervals = yaml.safe_load("\n".join(example))
    assert isinstance(intervals, list)
    return intervals


def test_the_documented_working_hours_pass_amtool(tmp_path):
    hours = documented_working_hours()
    assert hours[0]["weekdays"] == ["monday:friday"]
    config = load_yaml(ALERTMANAGER_CONFIG)
    set_owner_mail_hours(config, hours)
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "templates").symlink_to(TEMPLATES)
    assert "SUCCESS" in amtool("check-config", str(path))


def test_test_config_replaces_every_webhook_url(tmp_path):
    path = write_config(tmp_path, webhook_url="http://127.0.0.1:9/hook")
    config = load_yaml(path)
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert urls and set(urls) == {"http://127.0.0.1:9/hook"}
    assert config["global"]["smtp_smarthost"] == NO_SMTP  # never the site's relay
    assert config["route"]["group_wait"] == "1s"
    assert sorted(p.name for p in (tmp_path / "templates").iterdir()) == sorted(
        p.name for p in TEMPLATES.glob("*.tmpl")
    )
    assert "SUCCESS" in amtool("check-config", str(path))
