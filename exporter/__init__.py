"""gpu-exporter: NVIDIA GPU metrics for Prometheus and the legacy cluster JSON, one per node.

Data flows one way: NVML and psutil are read by the sampler into an immutable
:class:`~exporter.snapshot.Snapshot`, which the renderers (Prometheus collector, legacy JSON) turn
into responses. The status service imports the shared pieces (password handling, HTTP serving).
"""

from __future__ import annotations

__all__ = ["__version__"]

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("gpu-cluster-monitor")
except PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0.0.0+unknown"
