"""Structure of the Grafana bundle: dashboard JSON, import copy, provisioning, lint rules.

Grafana itself does not run here; these checks cover what it would reject or show badly, and
the applicable rules of grafana/dashboard-linter (template-datasource, panel-datasource,
target-rate-interval, target-counter-agg, panel-units, panel-title-description,
panel-no-targets, template-on-time-change-reload, template-label-promql, target-promql). PromQL
validity is decided by promtool, the real parser.
"""

from __future__ import annotations

import importlib.util
import re
from itertools import combinations
from types import ModuleType
from typing import Any

import pytest
import yaml

from simulator.prometheus import CONFIG, PROMETHEUS_DIR, load_yaml, promtool
from tests.support import dashboard as dash

DASHBOARD = dash.load()
PANELS = dash.panels(DASHBOARD)
VARIABLES = dash.variables(DASHBOARD)
PANEL_IDS = [f"{p['id']}-{p['title']}" for p in PANELS]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Panel types that ship with Grafana 10: the dashboard must not need a plugin.
CORE_PANEL_TYPES = {
    "row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline",
    "status-history", "text", "heatmap", "piechart", "barchart", "histogram",
}  # fmt: skip
# Grafana unit ids used or plausible here (Grafana's value formats).
UNITS = {
    "none", "short", "percent", "percentunit", "bytes", "decbytes", "watt", "kwatt", "joule",
    "kwatth", "celsius", "hertz", "s", "ms", "h", "d", "bool", "bool_on_off", "bool_yes_no",
}  # fmt: skip
# Linter rules that do not apply, with the reason; must match grafana/dashboards/.lint.
NOT_APPLICABLE = {
    "template-job-rule",
    "template-instance-rule",
    "target-job-rule",
    "target-instance-rule",
}
# Panels that read cluster-wide series on purpose (no node filter).
CLUSTER_WIDE = {
    "GPU-hours in the selected range",
    "GPU-hours per Slurm job in the selected range",
    "GPU-hours per namespace in the selected range",
    "SM and tensor activity per user in the selected range",
    "SM and tensor activity per Slurm job in the selected range",
    "Power of GPUs nobody holds",
    "Energy in the selected range",
    "Energy per user in the selected range",
    "Energy per Slurm job in the selected range",
    "Energy per namespace in the selected range",
}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_dashboard", dash.GRAFANA_DIR / "build_dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exprs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in PANELS for t in p["targets"]]


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_committed_json_is_what_the_generator_builds():
    build = generator()
    for path, text in build.expected_files().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is out of date: run python grafana/build_dashboard.py"
        )
    assert build.main(["--check"]) == 0


@pytest.mark.unit
def test_import_copy_is_the_provisioned_dashboard_with_inputs():
    build = generator()
    imported = dash.load(dash.IMPORT_COPY)
    assert imported == build.import_copy(DASHBOARD)
    assert [i["name"] for i in imported["__inputs"]] == ["DS_PROMETHEUS"]
    assert imported["__inputs"][0]["pluginId"] == "prometheus"
    assert VARIABLES["datasource"]["current"]["value"] == "gpu-prometheus"
    assert dash.variables(imported)["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    without_header = {k: v for k, v in imported.items() if not k.startswith("__")}
    assert without_header["panels"] == DASHBOARD["panels"]
    required_panels = {r["id"] for r in imported["__requires"] if r["type"] == "panel"}
    assert required_panels == {p["type"] for p in PANELS}


@pytest.mark.unit
def test_provisioned_dashboard_has_no_inputs():
    text = dash.DASHBOARD.read_text(encoding="utf-8")
    assert "__inputs" not in DASHBOARD
    assert "__requires" not in DASHBOARD
    assert "${DS_" not in text


@pytest.mark.unit
def test_dashboard_identity_is_what_the_readme_promises_and_refresh():
    readme = (dash.GRAFANA_DIR / "README.md").read_text(encoding="utf-8")
    # Links and bookmarks use the uid; the README tells people both uids.
    assert f"uid `{DASHBOARD['uid']}`" in readme
    datasource_uid = VARIABLES["datasource"]["current"]["value"]
    assert f"data source uid `{datasource_uid}`" in readme
    assert re.fullmatch(r"[a-z0-9-]{1,40}", DASHBOARD["uid"]), "Grafana uids: 40 characters"
    assert DASHBOARD["id"] is None  # an id would overwrite whatever dashboard has it
    assert DASHBOARD["schemaVersion"] >= 37  # Grafana 10
    refresh = DASHBOARD["refresh"]
    assert re.fullmatch(r"\d+[smh]", refresh)
    seconds = int(refresh[:-1]) * {"s": 1, "m": 60, "h": 3600}[refresh[-1]]
    scrape = load_yaml(CONFIG)["global"]["scrape_interval"]
    assert seconds >= int(scrape.rstrip("s")), "refreshing faster than Prometheus scrapes"


@pytest.mark.unit
def test_datasource_provisioning_matches_dashboard_and_scrape_interval():
    provisioning = load_yaml(dash.GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml")
    assert provisioning["apiVersion"] == 1
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == VARIABLES["datasource"]["current"]["value"]
    assert source["name"] == VARIABLES["datasource"]["current"]["text"]
    scrape = load_yaml(CONFIG)["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape


@pytest.mark.unit
def test_dashboard_provisioning_loads_the_dashboards_folder():
    provisioning = load_yaml(dash.GRAFANA_DIR / "provisioning" / "dashboards" / "gpu-cluster.yaml")
    assert provisioning["apiVersion"] == 1
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    readme = (dash.GRAFANA_DIR / "README.md").read_text(encoding="utf-8")
    assert provider["options"]["path"] in readme, "README must say where to put the dashboards"


# --- variables -----------------------------------------------------------------------------------


@pytest.mark.unit
def test_the_one_datasource_variable_is_the_one_every_query_uses():  # template-datasource-rule
    templated = [v for v in VARIABLES.values() if v["type"] == "datasource"]
    assert len(templated) == 1
    (variable,) = templated
    assert DATASOURCE["uid"] == "${" + variable["name"] + "}"
    assert variable["query"] == DATASOURCE["type"]  # it offers data sources of the panels' type
    assert variable["label"].strip()


def _matchers(name: str) -> list[str]:
    """How each query of the dashboard uses ``$name``: the operator before it, or "" if none."""
    texts = [t["expr"] for _, t in exprs()]
    texts += [str(v.get("query", "")) for v in VARIABLES.values()]
    found = []
    for text in texts:
        for match in re.finditer(r"(=~|!~|!=|=)?\s*\"?\$\{?" + name + r"\b", text):
            found.append(match.group(1) or "")
    return found


@pytest.mark.unit
@pytest.mark.parametrize(
    "name", [n for n, v in VARIABLES.items() if v.get("multi") or v.get("includeAll")]
)
def test_multi_value_variables_are_only_used_in_regex_matchers(name):
    """Several values (or All) expand to ``a|b``, which only a regex matcher reads as intended."""
    used = _matchers(name)
    assert used, f"${name} is never used"
    assert set(used) <= {"=~", "!~"}, f"${name} used with {sorted(set(used))}"
    all_value = VARIABLES[name].get("allValue")
    if VARIABLES[name].get("includeAll"):
        # A fixed regex instead of every value listed: a long alternation is slow and can be
        # cut off; and it must match every value, also one that appears after the page loaded.
        assert all_value is not None
        assert all(re.fullmatch(all_value, v) for v in ("gpu-a", "0", "alice", "x.y-z_1"))


@pytest.mark.unit
def test_query_variables_reload_on_time_change_and_use_label_values():
    for variable in VARIABLES.values():
        if variable["type"] != "query":
            continue
        assert variable["refresh"] == 2, variable["name"]  # template-on-time-change-reload
        assert variable["datasource"] == DATASOURCE, variable["name"]
        assert variable["definition"] == variable["query"]
        assert re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]), variable["name"]


@pytest.mark.unit
def test_every_variable_is_used():
    used = set()
    for panel in PANELS:
        used |= dash.references(panel["datasource"]["uid"])
        for target in panel["targets"]:
            used |= dash.references(target["expr"])
    for variable in VARIABLES.values():
        used |= dash.references(str(variable.get("query", "")))
    assert set(VARIABLES) - used == set()


@pytest.mark.unit
def test_every_variable_reference_resolves():
    known = set(VARIABLES) | dash.GLOBAL_VARIABLES
    texts = [str(v.get("query", "")) for v in VARIABLES.values()]
    for panel in PANELS:
        texts += [panel["title"], panel["description"], panel["datasource"]["uid"]]
        for target in panel["targets"]:
            texts += [target["expr"], target.get("legendFormat", ""), target["datasource"]["uid"]]
    unresolved = {name for text in texts for name in dash.references(text)} - known
    assert unresolved == set()


# --- panels --------------------------------------------------------------------------------------


@pytest.mark.unit
def test_panel_ids_are_unique_and_the_layout_does_not_overlap():
    everything = list(dash.all_panels(DASHBOARD))
    ids = [p["id"] for p in everything]
    assert len(ids) == len(set(ids))
    boxes = [p["gridPos"] for p in everything]
    for box in boxes:
        assert box["x"] >= 0 and box["w"] > 0 and box["x"] + box["w"] <= 24, box
    for a, b in combinations(boxes, 2):
        apart = (
            a["x"] + a["w"] <= b["x"]
            or b["x"] + b["w"] <= a["x"]
            or a["y"] + a["h"] <= b["y"]
            or b["y"] + b["h"] <= a["y"]
        )
        assert apart, f"panels overlap: {a} {b}"


def test_each_panel_states_its_own_width_and_the_layout_keeps_it():
    build = generator()
    stated = [(item["title"], item["gridPos"]["w"]) for _, row, _ in build.ROWS for item in row()]
    assert all(1 <= width <= 24 for _, width in stated), stated
    laid_out = [(p["title"], p["gridPos"]["w"]) for p in PANELS]
    assert laid_out == stated


@pytest.mark.unit
def test_a_panel_wider_than_the_grid_is_refused_by_name():
    build = generator()
    with pytest.raises(ValueError, match="'Too wide': width 25"):
        build.panel("stat", "Too wide", "A panel.", [], width=25)


@pytest.mark.unit
def test_rows_of_the_issue_are_there():
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows == [
        "Cluster overview", "Nodes", "Users", "Jobs and pods", "Health", "Exporters",
        "Efficiency", "Energy",
    ]  # fmt: skip
    titles = {p["title"] for p in PANELS}
    for expected in (
        "Nodes", "GPUs in use", "GPUs free", "GPU memory", "Mean GPU utilization", "GPU power",
        "Active users", "Alerts firing", "GPU utilization", "GPU memory used",
        "GPU temperature", "GPU memory per user", "GPUs per user",
        "GPU-hours in the selected range", "Processes on GPUs", "Throttling", "ECC errors",
        "Lost GPUs", "Exporter collectors", "GPUs per Slurm job", "GPU memory per Slurm job",
        "GPU-hours per Slurm job in the selected range", "GPUs per namespace",
        "GPU memory per pod", "Per-process SM utilization", "Idle GPUs held by processes",
        "XID errors", "Last XID", "Memory row remapping", "PCIe link", "NVLink errors",
        "NVLink links", "MIG devices", "Processes on MIG devices", "SM activity per GPU",
        "SM occupancy per GPU", "Tensor activity per GPU", "DRAM activity per GPU",
        "SM activity per MIG device", "Tensor activity per MIG device",
        "SM and tensor activity per user in the selected range",
        "SM and tensor activity per Slurm job in the selected range",
        "Held GPUs with low SM activity", "Power per node",
        "Energy per user in the selected range", "Energy per Slurm job in the selected range",
        "Energy per namespace in the selected range", "Power of GPUs nobody holds",
    ):  # fmt: skip
        assert expected in titles


@pytest.mark.unit
@pytest.mark.parametrize("panel", PANELS, ids=PANEL_IDS)
def test_panel_basics(panel):  # panel-title-description, panel-units, panel-no-targets
    assert panel["type"] in CORE_PANEL_TYPES
    assert panel["title"].strip()
    assert len(panel["description"]) > 20
    assert panel["fieldConfig"]["defaults"]["unit"] in UNITS
    assert panel["targets"], "a panel without a query"
    assert all(t["expr"].strip() for t in panel["targets"])
    refs = [t["refId"] for t in panel["targets"]]
    assert len(refs) == len(set(refs))


@pytest.mark.unit
@pytest.mark.parametrize("panel", PANELS, ids=PANEL_IDS)
def test_panel_uses_the_datasource_variable(panel):  # panel-datasource-rule
    assert panel["datasource"] == DATASOURCE
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE


@pytest.mark.unit
@pytest.mark.parametrize("panel", PANELS, ids=PANEL_IDS)
def test_panel_filters_by_node(panel):
    if panel["title"] in CLUSTER_WIDE:
        return
    for target in panel["targets"]:
        assert 'node=~"$node"' in target["expr"], target["expr"]


@pytest.mark.unit
@pytest.mark.parametrize("panel", PANELS, ids=PANEL_IDS)
def test_rates_use_rate_interval_and_ranges_are_never_hard_coded(panel):
    for target in panel["targets"]:
        found = dash.scan(target["expr"])
        for function, window in found.ranges:
            if function in {"rate", "irate"}:  # target-rate-interval-rule
                assert window == "$__rate_interval", target["expr"]
            assert window in {"$__rate_interval", "$__range"}, target["expr"]


@pytest.mark.unit
@pytest.mark.parametrize("panel", PANELS, ids=PANEL_IDS)
def test_counters_are_wrapped_in_rate_or_increase(panel):  # target-counter-agg-rule
    for target in panel["targets"]:
        for name, function, ranged in dash.scan(target["expr"]).selectors:
            if name.endswith(("_total", ":total")):
                assert ranged and function in {"rate", "irate", "increase"}, target["expr"]


@pytest.mark.unit
def test_scan_finds_unwrapped_counters_and_hard_coded_ranges():
    """The two rules above would catch the mistakes they exist for."""
    bare = dash.scan('sum(gpu_ecc_errors_total{type="x"})')
    assert bare.selectors == [["gpu_ecc_errors_total", "sum", False]]
    hard = dash.scan("sum by (user) (rate(gpu_energy_joules_total[5m]))")
    assert hard.ranges == [("rate", "5m")]
    assert hard.selectors == [["gpu_energy_joules_total", "rate", True]]


@pytest.mark.unit
def test_thresholds_on_panels_are_the_alert_thresholds():
    alerts = {
        rule["alert"]: rule["expr"]
        for name in ("alerts.yml", "efficiency.yml")
        for group in load_yaml(PROMETHEUS_DIR / "rules" / name)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    by_title = {p["title"]: p for p in PANELS}

    def steps(title: str) -> list[float]:
        defaults = by_title[title]["fieldConfig"]["defaults"]
        return [s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None]

    assert alerts["GpuHot"].endswith(f"> {steps('GPU temperature')[0]}")
    assert alerts["GpuMemoryNearlyFull"].endswith(f"> {steps('GPU memory used (share)')[0]}")
    assert alerts["GpuCollectionStale"].endswith(f"> {steps('Sample age')[0]}")
    low_sm = by_title["Held GPUs with low SM activity"]["targets"][0]["expr"]
    threshold = re.search(r"held\{[^}]*\} < ([\d.]+)", low_sm).group(1)
    assert f"gpu_sm_active_ratio < {threshold})" in alerts["GpuLowSmActivity"]


@pytest.mark.unit
def test_tables_are_readable():
    for panel in PANELS:
        if panel["type"] != "table":
            continue
        assert all(t["format"] == "table" and t["instant"] for t in panel["targets"])
        organize = [t for t in panel["transformations"] if t["id"] == "organize"]
        assert organize, panel["title"]
        renamed = organize[0]["options"]["renameByName"]
        assert renamed and all(header[0].isupper() for header in renamed.values())
        assert "Time" not in renamed and "__name__" not in renamed


@pytest.mark.unit
def test_tables_of_several_queries_merge_rows_of_one_label_set():
    """Grafana's merge joins rows whose common fields agree: a metric name or a label that only
    some queries carry would split one GPU over several rows."""
    merged = [p for p in PANELS if p["type"] == "table" and len(p["targets"]) > 1]
    assert merged
    for panel in merged:
        assert panel["transformations"][0]["id"] == "merge", panel["title"]
        exprs_ = [t["expr"] for t in panel["targets"]]
        assert not [e for e in exprs_ if re.fullmatch(r"[\w:]+\{[^}]*\}", e)], exprs_
        groupings = {re.match(r"(max by \([^)]*\))?", e).group(0) for e in exprs_}
        assert len(groupings) == 1, (panel["title"], groupings)  # all per GPU, or none
        columns = next(t for t in panel["transformations"] if t["id"] == "organize")
        values = [c for c in columns["options"]["renameByName"] if c.startswith("Value #")]
        assert values == [f"Value #{t['refId']}" for t in panel["targets"]], panel["title"]


@pytest.mark.unit
def test_energy_panels_are_kwh_from_the_energy_counters_over_the_range():
    energy = [p for p in PANELS if p["title"].startswith("Energy ")]
    assert len(energy) == 4
    for panel in energy:
        assert panel["fieldConfig"]["defaults"]["unit"] == "kwatth"
        for target in panel["targets"]:
            assert re.search(r"increase\([\w:]+gpu_\w*energy_joules:total\b", target["expr"])
            assert "[$__range]) / 3.6e6" in target["expr"], target["expr"]


@pytest.mark.unit
def test_efficiency_over_the_range_is_a_ratio_of_the_efficiency_counters():
    """SM and tensor activity of a holder over the range: active device-seconds over held
    device-seconds, both increases over the same range (rules/efficiency.yml)."""
    tables = [p for p in PANELS if p["title"].startswith("SM and tensor activity per ")]
    assert len(tables) == 2
    for panel in tables:
        sm, tensor, hours = (t["expr"] for t in panel["targets"])
        for expr, figure in ((sm, "sm_active"), (tensor, "tensor_active")):
            assert re.search(
                rf"increase\((\w+):gpu_{figure}_seconds:total(\{{[^}}]*\}}|)\[\$__range\]\)"
                rf" / increase\(\1:gpu_gpm_held_seconds:total\2\[\$__range\]\)",
                expr,
            ), expr
        assert re.search(r"increase\(\w+:gpu_gpm_held_seconds:total.*\[\$__range\]\) / 3600", hours)


@pytest.mark.unit
def test_processes_table_has_the_columns_of_the_issue():
    (panel,) = [p for p in PANELS if p["title"] == "Processes on GPUs"]
    organize = next(t for t in panel["transformations"] if t["id"] == "organize")
    assert list(organize["options"]["renameByName"].values()) == [
        "Node", "GPU", "User", "PID", "Command", "GPU memory",
    ]  # fmt: skip
    assert panel["fieldConfig"]["defaults"]["unit"] == "bytes"


@pytest.mark.unit
def test_lint_exclusions_are_only_the_rules_that_do_not_apply():
    lint = yaml.safe_load((dash.GRAFANA_DIR / "dashboards" / ".lint").read_text())
    exclusions = lint["exclusions"]
    assert set(exclusions) == NOT_APPLICABLE
    assert all(entry["reason"] for entry in exclusions.values())


@pytest.mark.prometheus
def test_every_query_is_valid_promql(tmp_path):  # target-promql-rule, template-label-promql
    rules = []
    selection = {"node": None, "gpu": None, "user": ["alice"]}
    for panel, target in exprs():
        rendered = dash.render(
            target["expr"], DASHBOARD, selection, range_="1h", rate_interval="1m"
        )
        rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}:check",
                      "expr": rendered})  # fmt: skip
    for variable in VARIABLES.values():
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.+), \w+\)", variable["query"]).group(1)
            rendered = dash.render(inner, DASHBOARD, selection, range_="1h", rate_interval="1m")
            rules.append({"record": f"dashboard:variable_{variable['name']}:check",
                          "expr": rendered})  # fmt: skip
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = promtool("check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in output
