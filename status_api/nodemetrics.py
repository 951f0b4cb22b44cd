"""Power readings from a node's ``/metrics``, which the legacy JSON does not carry.

The legacy ``/get-status`` schema is frozen (old scripts read it), so the page's power column
comes from the exporter's Prometheus metrics ``gpu_power_watts`` and ``gpu_power_limit_watts``.
Only those lines are looked at; a node without ``/metrics`` (an old node_info.py) simply has no
power figures. The text is untrusted like the JSON: anything unexpected is skipped, never raised.
"""

from __future__ import annotations

import math
import re

_FAMILIES = ((b"gpu_power_watts{", "power"), (b"gpu_power_limit_watts{", "power_limit"))
# The rest of a sample line after the family name: labels, then the value.
_REST = re.compile(rb"([^}\n]*)\}[ \t]+([^ \t\n]+)")
_GPU_LABEL = re.compile(rb'(?:^|,)\s*gpu="([0-9]{1,6})"')
MAX_GPUS = 1024


def _samples(text: bytes, prefix: bytes) -> list[tuple[bytes, bytes]]:
    """(labels, value) of every line starting with ``prefix``; bytes.find keeps it fast on the
    long per-process part of a scrape, which a line-anchored regex would crawl through."""
    found = []
    position = text.find(prefix)
    while position >= 0:
        if position == 0 or text[position - 1] == 0x0A:  # at the start of a line
            match = _REST.match(text, position + len(prefix))
            if match is not None:
                found.append((match.group(1), match.group(2)))
        position = text.find(prefix, position + len(prefix))
    return found


def parse_power(text: bytes) -> dict[int, dict[str, float]]:
    """``{gpu index: {"power": W, "power_limit": W}}`` from an exposition text."""
    readings: dict[int, dict[str, float]] = {}
    for prefix, key in _FAMILIES:
        for labels, raw in _samples(text, prefix):
            gpu = _GPU_LABEL.search(labels)
            if gpu is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                continue
            if not math.isfinite(value) or value < 0:
                continue
            index = int(gpu.group(1))
            if index not in readings and len(readings) >= MAX_GPUS:
                continue
            readings.setdefault(index, {})[key] = round(value, 1)
    return readings
