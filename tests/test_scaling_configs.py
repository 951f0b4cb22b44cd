"""The example configurations of docs/scaling.md pass promtool, and the page quotes them truly.

Every ``prometheus/examples/*.yml`` is a whole Prometheus configuration; ``promtool check
config`` (the real one) must accept it with no warning but the missing target files, which
``gpu-status-api targets`` writes at deployment. Every YAML block of the page follows the
example it quotes, and each of its lines is in that file as written.
"""

from __future__ import annotations

import re

import pytest

from simulator import REPO
from simulator.prometheus import PROMETHEUS_DIR, load_yaml, promtool

EXAMPLES = sorted((PROMETHEUS_DIR / "examples").glob("*.yml"))
DOC = REPO / "docs" / "scaling.md"
# An example's path, then (before any other code block) the YAML block quoting it.
_QUOTE = re.compile(
    r"`prometheus/examples/([\w.-]+\.yml)`(?:(?!```).)*?```yaml\n(.*?)```", re.DOTALL
)


def test_the_examples_are_there():
    names = {path.name for path in EXAMPLES}
    assert {"sharded-scrape.yml", "per-rack.yml", "remote-write.yml", "federation.yml"} <= names


@pytest.mark.prometheus
@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_promtool_accepts_the_example(path):
    output = promtool("check", "config", str(path))
    assert "SUCCESS" in output
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert all("/targets/" in line and "does not exist" in line for line in warnings), output


def test_sharded_example_keeps_the_shard_named_in_its_labels():
    config = load_yaml(PROMETHEUS_DIR / "examples" / "sharded-scrape.yml")
    shard = config["global"]["external_labels"]["shard"]
    relabel = config["scrape_configs"][0]["relabel_configs"]
    assert relabel[0]["action"] == "hashmod"
    assert relabel[1] == {"source_labels": ["__tmp_hash"], "regex": shard, "action": "keep"}
    assert 0 <= int(shard) < relabel[0]["modulus"]


def test_the_page_names_every_example_and_quotes_them_truly():
    text = DOC.read_text(encoding="utf-8")
    for path in EXAMPLES:
        assert f"prometheus/examples/{path.name}" in text, path.name
    quotes = _QUOTE.findall(text)
    assert {name for name, _ in quotes} == {path.name for path in EXAMPLES}
    for name, block in quotes:
        lines = (PROMETHEUS_DIR / "examples" / name).read_text(encoding="utf-8").splitlines()
        for line in block.splitlines():
            if line.strip() not in ("", "..."):
                assert line in lines, f"docs/scaling.md quotes {line!r}, not in {name}"


def test_the_page_keeps_a_measured_section_for_the_benchmark():
    text = DOC.read_text(encoding="utf-8")
    assert "\n## Measured\n" in text
    assert "benchmarks/bench_scale.py" in text.split("\n## Measured\n", 1)[1]
