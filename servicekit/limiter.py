"""Who a client is, and slowing down one that keeps guessing passwords.

:func:`address_key` and :func:`client_key` say whose requests count together: an IPv4 address, an
IPv6 /64, or the user or certificate the web configuration authenticated. :class:`FailureThrottle`
is a token bucket per such key for wrong passwords, with bounded bookkeeping.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any


def address_key(address: str) -> str:
    """The limiter's key for a client address: an IPv4 address, or the /64 of an IPv6 one.

    One IPv6 host usually holds a whole /64 and may pick any address in it, so a per-address
    limit would not limit it at all. IPv4-mapped addresses count as the IPv4 address.
    """
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])  # a zone id names no other host
    except ValueError:
        return address  # not an address (a Unix socket, a test): limited as written
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))
    return str(parsed)


def client_key(environ: Mapping[str, Any]) -> str:
    """Whose wrong passwords a request counts against.

    A client the web configuration authenticated (basic auth sets ``REMOTE_USER``; a verified
    client certificate sets ``SSL_CLIENT_VERIFY``) has a bucket of its own: another client
    guessing from the same address, for instance any user logged in on the main node, cannot
    lock ``gpu-status-api`` out. Everyone else is limited by address.
    """
    user = environ.get("REMOTE_USER")
    if user:
        return f"user {user}"
    if environ.get("SSL_CLIENT_VERIFY") == "SUCCESS" and environ.get("SSL_CLIENT_CERT"):
        fingerprint = hashlib.sha256(environ["SSL_CLIENT_CERT"].encode("ascii", "replace"))
        return f"certificate {fingerprint.hexdigest()}"
    return address_key(environ.get("REMOTE_ADDR") or "unknown")


class FailureThrottle:
    """Per-client token bucket for wrong passwords, in an LRU of bounded size.

    A request takes its token before its body is read (:meth:`take`) and hands it back when it
    turns out not to be a wrong password (:meth:`give_back`). Checking first and counting the
    failure afterwards would let many connections that send their bodies at the same moment all
    pass the check before any failure is counted.
    """

    def __init__(
        self, *, burst: int = 5, refill_per_second: float = 0.2, max_addresses: int = 4096
    ):
        self._burst = float(burst)
        self._refill = refill_per_second
        self._max = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - stamp) * self._refill)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)

    def take(self, key: str) -> float:
        """Take a token: 0 when taken, else the seconds to wait before one is available."""
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(key, now)
            if tokens < 1.0:
                # Refused, it is still the most recent: a client that keeps guessing while blocked
                # must not be pushed out by newer ones and come back with a full bucket.
                self._store(key, tokens, now)
                return (1.0 - tokens) / self._refill
            self._store(key, tokens - 1.0, now)
        return 0.0

    def give_back(self, key: str) -> None:
        """Return a token taken by :meth:`take` for a request that was not a wrong password."""
        now = time.monotonic()
        with self._lock:
            self._store(key, min(self._burst, self._tokens(key, now) + 1.0), now)
