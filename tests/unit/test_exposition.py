"""The exposition writer and the format negotiation, read back with prometheus_client's parsers."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from servicekit import exposition
from servicekit.exposition import (
    Family,
    FamilyCache,
    label_text,
    number,
    openmetrics_format,
    text_format,
)
from servicekit.metricsformat import OPENMETRICS, TEXT, negotiate, wants_openmetrics

pytestmark = pytest.mark.unit

HOSTILE = 'a "quoted" back\\slash\nnew line \u00e9 \u2603'


def families() -> list[Family]:
    up = Family("demo_up", "gauge", "1 if up.\nSecond line with a \\ backslash.")
    up.add(label_text((("gpu", "0"), ("name", HOSTILE))), 1.0)
    up.add(label_text((("gpu", "1"), ("name", ""))), 0.0)
    errors = Family("demo_errors", "counter", "Errors.")
    errors.add('gpu="0"', 12)
    info = Family("demo", "info", "Identity.")
    info.add(label_text((("serial", HOSTILE),)))
    empty = Family("demo_empty", "gauge", "Never has a sample.")
    bare = Family("demo_timestamp_seconds", "gauge", "No labels.")
    bare.add("", 1_700_000_000.25)
    return [up, errors, info, empty, bare]


def test_text_format_reads_back_with_names_types_labels_and_values() -> None:
    text = text_format(families()).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["demo_up"].type == "gauge"
    assert parsed["demo_up"].documentation == "1 if up.\nSecond line with a \\ backslash."
    assert [(s.labels, s.value) for s in parsed["demo_up"].samples] == [
        ({"gpu": "0", "name": HOSTILE}, 1.0),
        ({"gpu": "1", "name": ""}, 0.0),
    ]
    assert parsed["demo_errors"].type == "counter"
    assert [(s.name, s.value) for s in parsed["demo_errors"].samples] == [
        ("demo_errors_total", 12.0)
    ]
    # The text format has no info type: a gauge named with the _info suffix.
    assert parsed["demo_info"].type == "gauge"
    assert parsed["demo_info"].samples[0].labels == {"serial": HOSTILE}
    assert parsed["demo_empty"].samples == []
    assert "# HELP demo_empty Never has a sample.\n# TYPE demo_empty gauge\n" in text
    assert parsed["demo_timestamp_seconds"].samples[0].value == 1_700_000_000.25
    assert not text.endswith("# EOF\n")


def test_openmetrics_reads_back_with_its_own_types_and_eof() -> None:
    body = openmetrics_format(families()).decode()
    assert body.endswith("# EOF\n")
    parsed = {f.name: f for f in parse_openmetrics(body)}
    assert parsed["demo"].type == "info"
    assert parsed["demo"].samples[0].name == "demo_info"
    assert parsed["demo"].samples[0].labels == {"serial": HOSTILE}
    assert parsed["demo_errors"].type == "counter"
    assert parsed["demo_errors"].samples[0].name == "demo_errors_total"
    assert parsed["demo_up"].documentation == "1 if up.\nSecond line with a \\ backslash."
    assert parsed["demo_up"].samples[0].labels["name"] == HOSTILE


def test_a_bare_counter_keeps_its_name_in_both_formats() -> None:
    # dcgm-exporter's counters have no _total; dashboards query them by that exact name.
    energy = Family("DEMO_ENERGY", "bare_counter", "Energy (in mJ).")
    energy.add('gpu="0"', 123456789)
    text = text_format([energy]).decode()
    assert '# TYPE DEMO_ENERGY counter\nDEMO_ENERGY{gpu="0"} 123456789.0\n' in text
    body = openmetrics_format([energy]).decode()
    assert '# TYPE DEMO_ENERGY unknown\nDEMO_ENERGY{gpu="0"} 123456789.0\n' in body
    (family,) = parse_openmetrics(body)
    assert (family.type, family.samples[0].name) == ("unknown", "DEMO_ENERGY")


def test_a_lone_surrogate_is_replaced_not_a_failed_scrape() -> None:
    broken = Family("demo", "info", "Identity.")
    broken.add(label_text((("name", "bad \udcff byte"),)))
    text = text_format([broken]).decode()
    (family,) = text_string_to_metric_families(text)
    assert family.samples[0].labels == {"name": "bad ? byte"}


@pytest.mark.parametrize(
    ("value", "spelled"),
    [(1.0, "1.0"), (0.25, "0.25"), (85899345920, "85899345920.0"), (True, "1.0")],
)
def test_numbers_round_trip(value: float, spelled: str) -> None:
    assert number(value) == spelled
    assert float(spelled) == float(value)


def test_infinities_and_nan_are_spelled_as_prometheus_reads_them() -> None:
    assert (number(math.inf), number(-math.inf), number(math.nan)) == ("+Inf", "-Inf", "NaN")


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("", False),
        ("text/plain", False),
        ("*/*", False),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=1.0.0", True),
        ("application/openmetrics-text;version=0.0.1", True),
        # What Prometheus 2 and 3 send: OpenMetrics first, with the highest quality.
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        (
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
            "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
            "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            True,
        ),
        # Versions it does not write, a refusal, a preference for text, nonsense.
        ("application/openmetrics-text; version=2.0.0", False),
        ("application/openmetrics-text; version=1.x", False),
        ("application/openmetrics-text; q=0", False),
        ("application/openmetrics-text; q=0.2, text/plain; q=0.9", False),
        ("application/openmetrics-text; q=nan", False),
        (";;,,=;q=", False),
    ],
)
def test_the_accept_header_chooses_the_format(accept: str | None, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics
    chosen = negotiate(accept, None)
    assert chosen.content_type == (OPENMETRICS if openmetrics else TEXT)


def test_only_two_formats_and_two_codings_exist_whatever_the_headers() -> None:
    formats = {
        negotiate(f"application/openmetrics-text; version=1.0.0; x={n}; q=0.{n % 10}", coding)
        for n in range(200)
        for coding in (None, "gzip", "identity")
    }
    assert len(formats) <= 4


def _written_families(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the families the writers write (rather than take from a cache) from now on."""
    written: list[str] = []
    for name in ("_text_family", "_openmetrics_family"):
        write = getattr(exposition, name)

        def counting(family: Family, write: Callable[[Family], str] = write) -> str:
            written.append(family.name)
            return write(family)

        monkeypatch.setattr(exposition, name, counting)
    return written


@pytest.mark.parametrize("writer", [text_format, openmetrics_format])
def test_a_cache_writes_only_the_families_whose_samples_changed(
    writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _written_families(monkeypatch)
    cache = FamilyCache()
    first = writer(families(), cache)
    assert first == writer(families())  # the same bytes as without a cache
    assert written == ["demo_up", "demo_errors", "demo", "demo_empty", "demo_timestamp_seconds"] * 2
    written.clear()
    changed = families()
    changed[1].samples[0] = ('gpu="0"', 13)  # a new value
    changed[4].add('other="1"', 2.0)  # a new series
    again = writer(changed, cache)
    assert written == ["demo_errors", "demo_timestamp_seconds"]
    assert again == writer(changed)
    assert 'demo_errors_total{gpu="0"} 13.0' in again.decode()
    written.clear()
    assert writer(changed, cache) == again
    assert written == []


def test_a_cache_keeps_the_formats_apart() -> None:
    cache = FamilyCache()
    assert text_format(families(), cache) == text_format(families())
    assert openmetrics_format(families(), cache) == openmetrics_format(families())
    assert text_format(families(), cache) == text_format(families())
