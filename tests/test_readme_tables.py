"""README.md's flag and metric tables agree with the real command lines and a real ``/metrics``.

The flag tables are compared with the argparse parsers themselves; the metric table with the
OpenMetrics exposition of a running exporter on the fake NVML library, so a flag or metric added,
renamed or removed without its README row fails here, as the alert table does in
test_prometheus_rules.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.cli import build_parser as exporter_parser
from simulator import REPO
from simulator.fakenvml import scenario as fake
from status_api.cli import build_parser as status_parser
from status_api.cli import build_targets_parser
from status_api.job import build_parser as build_job_parser
from status_api.report import build_parser as build_report_parser

README = REPO / "README.md"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# Metric families the exporter yields only under conditions the busy scenario below does not
# meet, each with the reason; they must still have a README row. None today: every family is
# yielded on every scrape (empty when a GPU cannot report the field), processes included.
CONDITIONAL_FAMILIES: dict[str, str] = {}


@dataclass(frozen=True)
class Row:
    """One table row: the names of its first cell (canonical first) and its other cells."""

    names: tuple[str, ...]
    cells: tuple[str, ...]


def section(title: str) -> str:
    """The text of README.md's ``## title`` section, up to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    marker = f"\n## {title}\n"
    assert marker in text, f"README.md has no section '## {title}'"
    return text.split(marker, 1)[1].split("\n## ", 1)[0]


def tables(text: str, first_header: str) -> list[list[Row]]:
    """Every Markdown table of ``text`` whose first header cell is ``first_header``, in order."""
    found: list[list[Row]] = []
    rows: list[Row] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            rows = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if rows is None:
            if cells[0] == first_header:
                rows = []
                found.append(rows)
            continue
        if set(cells[0]) <= set("-: "):  # the separator line
            continue
        rows.append(Row(tuple(re.findall(r"`([^`]+)`", cells[0])), tuple(cells[1:])))
    return found


# ---------------------------------------------------------------- flags


def canonical(action: argparse.Action) -> str:
    """The name a flag is documented under: its first long option (``--config``, not ``-c``)."""
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def documented_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's flags a person may use: not help, not the hidden (``SUPPRESS``) ones."""
    return [
        action
        for action in parser._actions
        if action.option_strings
        and action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._HelpAction)
    ]


def rendered_default(action: argparse.Action) -> str | None:
    """The default as the table writes it; ``None`` when it is computed (any words will do)."""
    default = action.default
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if isinstance(action, argparse.BooleanOptionalAction):
        return "on" if default else "off"
    if isinstance(action, argparse._VersionAction) or default in (None, argparse.SUPPRESS):
        return None
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, Path):
        return str(default)
    return str(default)


def flag_table(command: str) -> list[Row]:
    """The flag table of ``command``: the exporter's, the status service's two (serve, then
    ``targets``), or the engine commands' two (``report``, then ``job``)."""
    found = tables(section(SECTIONS[command]), "flag")
    expected = 1 if SECTIONS[command] == "gpu-exporter" else 2
    assert len(found) == expected, f"the {SECTIONS[command]} section has {expected} flag table(s)"
    return found[-1] if command in ("targets", "job") else found[0]


SECTIONS = {
    "gpu-exporter": "gpu-exporter",
    "gpu-status-api": "gpu-status-api",
    "targets": "gpu-status-api",
    "report": "Prometheus and Grafana",
    "job": "Prometheus and Grafana",
}
PARSERS = {
    "gpu-exporter": exporter_parser,
    "gpu-status-api": status_parser,
    "targets": build_targets_parser,
    "report": build_report_parser,
    "job": build_job_parser,
}


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_flag_table_lists_every_flag_with_its_aliases_and_default(command):
    rows = flag_table(command)
    actions = documented_flags(PARSERS[command]())
    by_name = {row.names[0]: row for row in rows if row.names}
    assert len(by_name) == len(rows), f"{command}: a row without a flag, or a flag twice"
    missing = sorted(canonical(a) for a in actions if canonical(a) not in by_name)
    assert missing == [], f"{command}: flags missing from README.md (canonical name first)"
    for action in actions:
        row = by_name[canonical(action)]
        assert set(row.names) == set(action.option_strings), (
            f"{command} {canonical(action)}: README names {row.names}, the parser accepts "
            f"{action.option_strings}"
        )
        expected = rendered_default(action)
        cell = row.cells[0].replace("`", "")
        if expected is not None:
            assert cell == expected or cell.startswith(expected + " "), (
                f"{command} {canonical(action)}: README default {cell!r}, parser {expected!r}"
            )


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_flag_table_names_only_flags_that_exist(command):
    accepted = {o for a in documented_flags(PARSERS[command]()) for o in a.option_strings}
    named = {name for row in flag_table(command) for name in row.names}
    assert named - accepted == set(), f"{command}: README.md lists flags the parser lacks"


def test_flag_rows_take_aliases_after_the_canonical_name():
    parsed = tables(
        "| flag | default | meaning |\n|---|---|---|\n"
        "| `--web.listen-address` (`--port`, `--listen-address`) | :7080 | where |\n",
        "flag",
    )
    assert parsed == [
        [Row(("--web.listen-address", "--port", "--listen-address"), (":7080", "where"))]
    ]


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Family:
    """A metric family as exposed: the sample name, OpenMetrics type, label names and values."""

    name: str
    type: str
    labels: frozenset[str]
    values: dict[str, frozenset[str]]


def exposed_name(name: str, kind: str) -> str:
    """The name people query: OpenMetrics families drop the ``_total``/``_info`` suffix."""
    return name + {"counter": "_total", "info": "_info"}.get(kind, "")


def scrape_families(text: str) -> dict[str, Family]:
    families = {}
    for family in text_string_to_metric_families(text):
        name = exposed_name(family.name, family.type)
        values: dict[str, set[str]] = {}
        for sample in family.samples:
            for key, label in sample.labels.items():
                values.setdefault(key, set()).add(label)
        families[name] = Family(
            name,
            family.type,
            frozenset(values),
            {key: frozenset(seen) for key, seen in values.items()},
        )
    return families


def readme_metrics() -> dict[str, Family]:
    """The rows of README's metric table, one entry per metric name of a row."""
    (rows,) = tables(section("gpu-exporter").split("### Metrics", 1)[1], "metric")
    documented = {}
    for row in rows:
        kind, label_cell = row.cells[0], row.cells[1]
        labels: dict[str, frozenset[str]] = {}
        for item in filter(None, (part.strip() for part in label_cell.split(","))):
            key, _, listed = item.partition("=")
            labels[key.strip()] = frozenset(re.findall(r"`([^`]+)`", listed))
        for name in row.names:
            assert name not in documented, f"{name} has two rows in README.md"
            documented[name] = Family(name, kind, frozenset(labels), labels)
    return documented


def every_family_scenario(pids: list[int]) -> fake.FakeScenario:
    """Two loaded GPUs with processes, one of them reporting every health reading; an older GPU
    that retires pages and has seen an XID; a GPU in MIG mode: every family has a sample."""
    busy = fake.busy(2, pids)
    first = dataclasses.replace(
        busy.gpus[0],
        ecc_aggregate_corrected=1,
        ecc_aggregate_uncorrected=0,
        pcie_replay=0,
        pcie_link=fake.FakePcieLink(max_gen=5, max_width=16, gen=5, width=16),
        pcie_throughput=(1000, 2000),
        nvlinks=[fake.FakeNvLink()],
        remapped_rows=fake.FakeRemappedRows(),
        process_utilization=[
            fake.FakeProcessUtilization(process.pid, 60, 20, 1, 2)
            for process in busy.gpus[0].processes
        ],
    )
    older = dataclasses.replace(
        busy.gpus[1], retired_pages={"sbe": 1, "dbe": 0}, xids=[fake.FakeXid(13)]
    )
    return dataclasses.replace(busy, gpus=[with_gpm(first), older, with_gpm(fake.make_mig_gpu(2))])


def with_gpm(gpu: fake.FakeGpu) -> fake.FakeGpu:
    """``gpu`` with every GPM figure, for the GPU and for its first GPU instance if in MIG."""
    ratios = {name: 10 for name in ("graphics_active", "sm_active", "sm_occupancy",
                                    "tensor_active", "dram_active", "fp64_active", "fp32_active",
                                    "fp16_active")}  # fmt: skip
    traffic = dict.fromkeys(("pcie_tx", "pcie_rx", "nvlink_tx", "nvlink_rx"), fake.MIB)
    return dataclasses.replace(
        gpu,
        gpm="supported",
        gpm_metrics=fake.FakeGpmMetrics(**ratios, **traffic),
        gpm_mig_metrics={gpu.migs[0].gpu_instance: fake.FakeGpmMetrics(**ratios)}
        if gpu.migs
        else {},
    )


@pytest.fixture
def busy_metrics(exporter_factory, worker_pids) -> str:
    """OpenMetrics text of an exporter whose scenario gives every metric family a sample."""
    exporter = exporter_factory(
        every_family_scenario(worker_pids(4)),
        "--collector.pcie-throughput",
        "--metrics.command-line",
    )
    exporter.wait_for_metrics(
        lambda text: "gpu_xid_errors_total{" in text and "gpu_mig_sm_active_ratio{" in text
    )
    response = requests.get(f"{exporter.url}/metrics", headers={"Accept": OPENMETRICS}, timeout=5)
    response.raise_for_status()
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    return response.text


def test_metric_table_matches_the_families_of_a_real_scrape(busy_metrics):
    exposed = scrape_families(busy_metrics)
    documented = readme_metrics()
    assert set(exposed) - set(documented) == set(), "metrics missing from README.md"
    unexplained = set(documented) - set(exposed) - set(CONDITIONAL_FAMILIES)
    assert unexplained == set(), "README.md rows for metrics the exporter does not have"
    for name, family in exposed.items():
        row = documented[name]
        assert row.type == family.type, f"{name}: README type {row.type}, /metrics {family.type}"
        assert row.labels == family.labels, f"{name}: README labels differ from /metrics"
        for key, listed in row.values.items():
            if listed:  # a row that names a label's values names all of them
                assert family.values[key] <= listed, f"{name}: {key} values not in README.md"


def test_conditional_families_are_documented_and_absent_here(busy_metrics):
    exposed = scrape_families(busy_metrics)
    documented = readme_metrics()
    for name, reason in CONDITIONAL_FAMILIES.items():
        assert reason, f"{name}: say when it appears"
        assert name in documented, f"{name} is missing from README.md"
        assert name not in exposed, f"{name} is always exposed; drop it from the conditional list"


# ---------------------------------------------------------------- dcgm-exporter names


def readme_dcgm_names() -> dict[str, Row]:
    """The migration table's rows, one entry per DCGM name of a row."""
    (rows,) = tables(section("gpu-exporter"), "DCGM name")
    return {name: row for row in rows for name in row.names if name.startswith("DCGM_")}


def test_migration_table_matches_the_dcgm_families_of_a_real_scrape(exporter_factory, worker_pids):
    exporter = exporter_factory(every_family_scenario(worker_pids(4)), "--metrics.dcgm-names")
    exporter.wait_for_metrics(
        lambda text: "\nDCGM_FI_DEV_XID_ERRORS{" in text and "\nDCGM_FI_PROF_SM_ACTIVE{" in text
    )
    # the text format, as dcgm-exporter serves it: its TYPE lines carry dcgm-exporter's types
    response = requests.get(f"{exporter.url}/metrics", headers={"Accept": "text/plain"}, timeout=5)
    response.raise_for_status()
    types = dict(re.findall(r"^# TYPE (DCGM_\w+) (\w+)$", response.text, re.MULTILINE))
    sampled = set(re.findall(r"^(DCGM_\w+)\{", response.text, re.MULTILINE))
    documented = readme_dcgm_names()
    assert set(documented) == set(types), "README's migration table differs from /metrics"
    assert sampled == set(types), "a DCGM family without a sample in a scenario that has them all"
    for name, row in documented.items():
        assert row.cells[0] == types[name], (
            f"{name}: README type {row.cells[0]}, /metrics {types[name]}"
        )
