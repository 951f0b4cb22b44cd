"""Who a request is from when a reverse proxy stands in front: ``--web.trusted-proxies``.

Behind nginx or a university's proxy every viewer arrives from the proxy's address, so the limits
kept per client (requests in flight, wrong passwords) would treat all of them as one. From the
addresses named trusted, and only from them, the client is read from the header the proxy adds:
``X-Forwarded-For`` (``client, proxy1, proxy2``: each proxy appends the address it was reached
from) or RFC 7239's ``Forwarded`` (``for=client, for=proxy1``). The list is read from the right:
the nearest entries were written by proxies we trust, the first address that is not a trusted
proxy is the client. Whatever a client writes into these headers itself stands further left and
is never reached, unless every proxy on the way is trusted, which is the operator's statement.

A request from a trusted proxy that carries both headers is ambiguous: a proxy writes one of
them, and the other came from the client, unchecked. Such a request, and one whose nearest entry
is not an address (``unknown``, an obfuscated name), counts as the proxy's own; so does one with
neither header (the proxy's own health checks). From any other address both headers are ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 16  # entries read from the right; a longer chain is not a path an honest request took
_FORWARDED_FOR = re.compile(r'(?:^|[;,\s])for\s*=\s*("[^"]*"|[^;,\s]+)', re.IGNORECASE)
PEER_KEY = "servicekit.peer"  # the environ entry keeping the proxy's own address


class ProxyListError(ValueError):
    """A ``--web.trusted-proxies`` value that is not a list of addresses or networks."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """``CIDR[,CIDR]`` (a bare address is its own /32 or /128); ProxyListError names the bad one."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ProxyListError(f"{item!r} is not an IP address or network (CIDR)") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded's "[v6]:port"
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The proxies whose forwarding headers are believed, and the client they name."""

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (an address as the socket gives it) is a trusted proxy."""
        address = _address(peer)
        return address is not None and self._trusted(address)

    def _trusted(self, address: Address) -> bool:
        return any(address.version == net.version and address in net for net in self._networks)

    def client(self, peer: str, headers: Mapping[str, Any]) -> str:
        """The client a request from ``peer`` is for; ``headers`` in WSGI environ form."""
        if not self.trusts(peer):
            return peer
        forwarded_for = headers.get("HTTP_X_FORWARDED_FOR")
        forwarded = headers.get("HTTP_FORWARDED")
        if (forwarded_for is None) == (forwarded is None):  # neither, or ambiguous
            return peer
        if forwarded_for is not None:
            chain = str(forwarded_for).split(",")
        else:
            chain = _FORWARDED_FOR.findall(str(forwarded))
        client = peer
        for entry in reversed(chain[-MAX_HOPS:]):
            address = _address(entry)
            if address is None:
                return client  # the proxy's own, or the nearest trusted hop's
            client = str(address)
            if not self._trusted(address):
                return client
        return client  # every hop trusted: the leftmost one is the client

    def apply(self, environ: dict[str, Any]) -> None:
        """Set ``REMOTE_ADDR`` to the client, keeping the proxy's address under :data:`PEER_KEY`."""
        peer = environ.get("REMOTE_ADDR") or ""
        client = self.client(peer, environ)
        if client != peer:
            environ[PEER_KEY] = peer
            environ["REMOTE_ADDR"] = client
