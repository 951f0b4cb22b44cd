"""Read Prometheus text exposition: samples by name and labels (tests, load and soak drivers)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample as ``(name, labels, value)``; raises on text Prometheus could not parse."""
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def values(text: str, name: str, **labels: str) -> list[float]:
    """Values of ``name`` whose labels include ``labels``."""
    return [
        value
        for sample_name, sample_labels, value in parse_samples(text)
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    ]


def value(text: str, name: str, **labels: str) -> float:
    """The one value of ``name`` with ``labels``; AssertionError if not exactly one."""
    found = values(text, name, **labels)
    assert len(found) == 1, f"expected one {name}{labels}, found {found}"
    return found[0]


def label_sets(text: str, name: str) -> list[dict[str, str]]:
    return [labels for sample_name, labels, _ in parse_samples(text) if sample_name == name]
