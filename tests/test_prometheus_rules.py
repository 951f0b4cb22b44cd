"""The Prometheus bundle passes promtool, its unit tests cover every rule, the README agrees.

promtool is the real thing (Debian's ``prometheus`` package); these tests fail with its output.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from simulator.prometheus import CONFIG, PROMETHEUS_DIR, load_yaml, promtool

RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
SEVERITIES = {"critical", "warning", "info"}
# Alerts about a whole node's exporter: their descriptions speak of all its GPUs.
NODE_ALERTS = {"GpuExporterDown", "GpuCollectionFailing", "GpuCollectionStale"}
# Annotations beyond summary and description, for the mail to a GPU's owner (alertmanager.yml).
EXTRA_ANNOTATIONS = {"GpuIdleButHeld": {"idle_since"}}
# Levels of recording rules, as listed at the top of rules/recording.yml, rules/efficiency.yml
# and rules/energy.yml.
LEVELS = {
    "node_gpu_process",
    "node_gpu_user",
    "node_gpu_slurm_job",
    "node_gpu_pod",
    "node_gpu_namespace",
    "node_gpu",
    "node_user",
    "node",
    "user",
    "slurm_job",
    "namespace",
    "cluster",
}


def rules_of(kind: str) -> list[dict[str, Any]]:
    """Every rule of the shipped rule files that has the key ``kind`` (alert or record)."""
    return [
        rule
        for path in RULE_FILES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


def unit_tests() -> list[dict[str, Any]]:
    return [test for path in TEST_FILES for test in load_yaml(path)["tests"]]


@pytest.mark.unit
def test_bundle_has_rules_and_unit_tests():
    assert [p.name for p in RULE_FILES] == [
        "alerts.yml",
        "efficiency.yml",
        "energy.yml",
        "recording.yml",
        "thresholds.yml",
    ]
    assert TEST_FILES, "no promtool unit tests under prometheus/tests"


@pytest.mark.prometheus
def test_promtool_check_config_with_generated_targets(tmp_path):
    bundle = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, bundle)
    targets = [
        {"targets": ["node1:7080"], "labels": {"node": "node1"}},
        {"targets": ["node2:7081"], "labels": {"node": "node2"}},
    ]
    (bundle / "targets" / "gpu-nodes.json").write_text(json.dumps(targets))
    output = promtool("check", "config", str(bundle / "prometheus.yml"))
    assert "SUCCESS: 5 rule files found" in output
    assert "WARNING" not in output, output


@pytest.mark.prometheus
def test_shipped_config_without_targets_only_warns_about_the_missing_file():
    output = promtool("check", "config", str(CONFIG))
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert all("targets/gpu-nodes.json" in line for line in warnings), output


@pytest.mark.prometheus
def test_targets_file_feeds_the_gpu_job_with_its_node_label(tmp_path):
    bundle = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, bundle)
    targets = [{"targets": ["gpu-a.example:7080"], "labels": {"node": "gpu-a.example"}}]
    (bundle / "targets" / "gpu-nodes.json").write_text(json.dumps(targets))
    output = promtool(
        "check", "service-discovery", "--timeout=2s", str(bundle / "prometheus.yml"), "gpu"
    )
    discovered, _ = json.JSONDecoder().raw_decode(output[output.index("[") :])
    assert len(discovered) == 1
    labels = discovered[0]["labels"]
    assert labels["instance"] == "gpu-a.example:7080"
    assert labels["node"] == "gpu-a.example"
    assert labels["job"] == "gpu"


@pytest.mark.unit
def test_scrape_settings_and_alertmanager_section():
    config = load_yaml(CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["scrape_timeout"] == "10s"
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "gpu"]
    assert job["scrape_interval"] == "15s"
    assert job["scrape_timeout"] == "10s"
    assert job["file_sd_configs"][0]["files"] == ["targets/gpu-nodes.json"]
    assert config["rule_files"] == [
        "rules/thresholds.yml",
        "rules/recording.yml",
        "rules/energy.yml",
        "rules/alerts.yml",
        "rules/efficiency.yml",
    ]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == []


@pytest.mark.prometheus
def test_promtool_check_rules():
    output = promtool("check", "rules", *map(str, RULE_FILES))
    assert output.count("SUCCESS") == len(RULE_FILES), output


@pytest.mark.prometheus
def test_promtool_rule_unit_tests_pass():
    output = promtool("test", "rules", *map(str, TEST_FILES))
    assert "FAILED" not in output, output


@pytest.mark.unit
def test_every_alert_is_tested_firing_and_not_firing():
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in unit_tests():
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in rules_of("alert")}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested not firing"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


@pytest.mark.unit
def test_every_recording_rule_is_tested():
    tested = {
        name
        for test in unit_tests()
        for case in test.get("promql_expr_test", [])
        for name in re.findall(r"[a-z_]+:[a-z_]+:[a-z_]+", case["expr"])
        if case.get("exp_samples")
    }
    records = {rule["record"] for rule in rules_of("record")}
    assert records - tested == set(), "recording rules without a promql_expr_test with samples"


@pytest.mark.unit
def test_every_rule_file_is_loaded_by_a_unit_test_file():
    loaded = {
        (path.parent / relative).resolve()
        for path in TEST_FILES
        for relative in load_yaml(path)["rule_files"]
    }
    # The generated thresholds are stood in for by a copy with short times, which must record
    # the same series.
    shipped = PROMETHEUS_DIR / "rules" / "thresholds.yml"
    short = PROMETHEUS_DIR / "tests" / "rules" / "short-thresholds.yml"
    assert short.resolve() in loaded
    assert _records(short) == _records(shipped)
    assert {path.resolve() for path in RULE_FILES if path != shipped} <= loaded


def _records(path: Path) -> set[str]:
    return {rule["record"] for group in load_yaml(path)["groups"] for rule in group["rules"]}


@pytest.mark.unit
def test_efficiency_rules_read_only_the_exporter_and_their_own_series():
    """Rule groups are evaluated independently: efficiency.yml must not wait on recording.yml."""
    path = PROMETHEUS_DIR / "rules" / "efficiency.yml"
    rules = [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]
    recorded = {rule["record"] for rule in rules if "record" in rule}
    read = {name for rule in rules for name in re.findall(r"\w+:\w+:\w+", rule["expr"])}
    assert read <= recorded, read - recorded


@pytest.mark.unit
def test_recording_rules_follow_the_naming_convention():
    for rule in rules_of("record"):
        level, metric, operations = rule["record"].split(":")
        assert level in LEVELS, rule["record"]
        assert metric.startswith("gpu"), rule["record"]
        assert operations, rule["record"]


@pytest.mark.unit
@pytest.mark.parametrize("rule", rules_of("alert"), ids=lambda rule: rule["alert"])
def test_alert_has_severity_and_annotations_naming_node_and_gpu(rule):
    assert rule["alert"].startswith("Gpu"), "the dashboard counts alerts named Gpu*"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = dict(rule["annotations"])
    extra = EXTRA_ANNOTATIONS.get(rule["alert"], set())
    assert set(annotations) == {"summary", "description"} | extra
    for name in extra:
        del annotations[name]
    for text in annotations.values():
        assert "$labels.node" in text
    if rule["alert"] in NODE_ALERTS:
        description = annotations["description"]
        assert "all GPUs" in description or "none of the GPUs" in description
    else:
        assert all("{{ $labels.gpu }}" in text for text in annotations.values())
        assert "$labels.uuid" in annotations["description"]


def readme_thresholds() -> dict[str, dict[str, str]]:
    """Rows of the alert table in prometheus/README.md, by alert name."""
    text = (PROMETHEUS_DIR / "README.md").read_text(encoding="utf-8")
    section = text.split("## Alert thresholds", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`Gpu"):
            rows[cells[0].strip("`")] = {
                "when": cells[1],
                "for": cells[2],
                "severity": cells[3],
            }
    return rows


@pytest.mark.unit
def test_readme_threshold_table_matches_the_alert_rules():
    rows = readme_thresholds()
    alerts = {rule["alert"]: rule for rule in rules_of("alert")}
    assert set(rows) == set(alerts)
    for name, rule in alerts.items():
        row = rows[name]
        assert row["for"] == rule.get("for", "0s"), name
        assert row["severity"] == rule["labels"]["severity"], name
        # Every number in the expression (thresholds) and every range is in the table too.
        numbers = re.findall(r"(?<![\w.\[:])\d+(?:\.\d+)?(?![\w.])", rule["expr"])
        ranges = re.findall(r"\[(\w+)", rule["expr"])
        for token in numbers + ranges:
            assert token in row["when"], f"{name}: {token} of the rule is not in README"


@pytest.mark.unit
def test_shorten_for_leaves_the_shipped_rules_alone(tmp_path):
    from simulator.prometheus import shorten_for

    path = PROMETHEUS_DIR / "rules" / "alerts.yml"
    before = path.read_bytes()
    shortened = shorten_for(load_yaml(path), "2s")
    durations = {rule.get("for") for g in shortened["groups"] for rule in g["rules"]}
    assert durations == {"2s", None}
    assert path.read_bytes() == before


@pytest.mark.unit
@pytest.mark.parametrize(
    ("path", "flags"),
    [
        (PROMETHEUS_DIR / "rules" / "thresholds.yml", []),
        (
            PROMETHEUS_DIR / "tests" / "rules" / "short-thresholds.yml",
            ["--stale-after", "20", "--offline-after", "60", "--idle-held-after", "120",
             "--xid-recent", "600"],
        ),
    ],
    ids=["shipped", "unit-tests"],
)  # fmt: skip
def test_threshold_rules_are_what_the_generator_writes(path, flags):
    """The thresholds the rules read are the service's (its defaults, or the flags given), and
    the XIDs that make a GPU sick are those of status_api/health.py."""
    from status_api.arguments import build_thresholds_parser
    from status_api.cli import _thresholds
    from status_api.health import SICK, XIDS
    from status_api.vocabulary import threshold_rules

    args = build_thresholds_parser().parse_args(flags)
    assert path.read_text(encoding="utf-8") == threshold_rules(_thresholds(args))
    sick = {
        rule["labels"]["xid"]
        for rule in load_yaml(path)["groups"][0]["rules"]
        if rule["record"] == "cluster:gpu_sick_xid:info"
    }
    assert sick == {str(code) for code, (state, _) in XIDS.items() if state == SICK}
