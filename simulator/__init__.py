"""A GPU cluster without GPUs: the fake NVML library, simulated nodes and the demo.

This is the project's development and demo backend, in the way other exporters ship a demo mode:
``simulator.fakenvml`` stands in for ``libnvidia-ml.so.1`` and serves GPU states from scenario
files, ``simulator.nodes`` answers like many exporters (or misbehaving ones) at once, and
``simulator.demo`` runs a whole cluster on one machine. The tests, the benchmarks and ``make demo``
all use it; the services never import it.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
