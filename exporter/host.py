"""Facts about the node itself: host name and IPv4 addresses of the real interfaces."""

from __future__ import annotations

import socket

import psutil

from exporter.snapshot import HostInfo

# Interfaces that never identify the node to a user: loopback and container bridges/veths.
_SKIPPED_PREFIXES = ("lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "cali")


def _listed(interface: str) -> bool:
    return not interface.startswith(_SKIPPED_PREFIXES)


def read_host(*, hostname: str | None = None) -> HostInfo:
    """Host name (overridable, e.g. for the demo) and ``(interface, ipv4)`` pairs, sorted."""
    ips: list[tuple[str, str]] = []
    for interface, addresses in psutil.net_if_addrs().items():
        if not _listed(interface):
            continue
        ips.extend(
            (interface, address.address)
            for address in addresses
            if address.family == socket.AF_INET and not address.address.startswith("127.")
        )
    return HostInfo(hostname=hostname or socket.gethostname(), ips=tuple(sorted(ips)))
