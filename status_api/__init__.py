"""gpu-status-api: the cluster status service and web page, polling every node's exporter.

Data flows one way: hosts.txt (:mod:`status_api.hosts`) names the nodes, the poller
(:mod:`status_api.poller`) fetches and checks each node's legacy ``/get-status`` JSON, the cluster
(:mod:`status_api.cluster`) keeps per-node state and renders the JSON views once per round, and
the HTTP app (:mod:`status_api.app`) serves those bytes, the page and ``/metrics``.
"""

from __future__ import annotations

__all__ = ["__version__"]

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("gpu-cluster-monitor")
except PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0.0.0+unknown"
