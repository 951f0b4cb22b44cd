"""The legacy ``/get-status`` password: its source, its check, and slowing down guessing.

The password never comes from the command line (``ps`` would show it): it is read from a file
(``--password-file``) or the ``GPU_MONITOR_PASSWORD`` environment variable, else the old default.
A password file may hold several passwords, one per line, all accepted: that is how a password is
rotated without downtime (add the new one, switch the clients, remove the old). The file is re-read
when it changes. Comparison is constant-time, and a client that keeps guessing wrong is answered
429 for a while, with bounded bookkeeping: an address (an IPv6 /64), or the user or certificate
the web configuration authenticated.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_VAR = "GPU_MONITOR_PASSWORD"
DEFAULT_PASSWORD = "8888"


class PasswordError(Exception):
    """The password file is missing, unreadable or empty."""


def _read_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PasswordError(f"cannot read password file {path}: {error}") from error
    passwords = [line.strip() for line in text.splitlines() if line.strip()]
    if not passwords:
        raise PasswordError(f"password file {path} holds no password")
    return passwords


def uses_default(*, password_file: Path | None, env_var: str = ENV_VAR) -> bool:
    """Whether neither a file nor the environment gives a password, so the old default applies."""
    return password_file is None and not os.environ.get(env_var)


def load_password(
    *,
    password_file: Path | None,
    env_var: str = ENV_VAR,
    default: str = DEFAULT_PASSWORD,
) -> str:
    """The password a client sends: first line of the file, else the environment, else default."""
    if password_file is not None:
        return _read_file(password_file)[0]
    return os.environ.get(env_var) or default


def warn_if_exposed(path: Path, *, what: str) -> None:
    """Warn (once, at start) when a password file is open to other users.

    Group or world permissions let others read (or change) the password; a file owned by another
    user can be opened up by that user at any time. root is not "another user": it can read any
    file anyway. The file is still used: a warning, not a refusal, so an upgrade never stops a
    service that ran before.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return  # reading the file reports this with its own error
    problems = []
    others = [
        who for bit, who in ((0o060, "its group"), (0o006, "every user")) if stat.st_mode & bit
    ]
    if others:
        problems.append(f"open to {' and '.join(others)} (mode {stat.st_mode & 0o7777:04o})")
    if stat.st_uid not in (os.geteuid(), 0):
        problems.append(f"owned by another user (uid {stat.st_uid})")
    if problems:
        log.warning(
            "%s %s is %s: other users may read the password; make it mode 0600 and owned by the "
            "user running this service",
            what,
            path,
            " and ".join(problems),
        )


# Keyed per process, so the digests kept in memory are no use outside it.
_DIGEST_KEY = secrets.token_bytes(32)


def _digest(text: str) -> bytes:
    """A fixed-size digest of a password; any str encodes, even a lone surrogate ("\\ud800")."""
    encoded = text.encode("utf-8", errors="surrogatepass")
    return hmac.new(_DIGEST_KEY, encoded, hashlib.sha256).digest()


class PasswordSource:
    """The accepted passwords, re-read from the file when it changes."""

    def __init__(self, *, password_file: Path | None, env_var: str = ENV_VAR) -> None:
        self._file = password_file
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        if password_file is not None:
            self._set(_read_file(password_file))
            self._stamp = self._file_stamp()
            self.origin = f"file {password_file}"
        elif os.environ.get(env_var):
            self._set([os.environ[env_var]])
            self.origin = f"environment variable {env_var}"
        else:
            self._set([DEFAULT_PASSWORD])
            self.origin = "built-in default"

    @property
    def is_default(self) -> bool:
        return self.origin == "built-in default"

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self._file)  # type: ignore[arg-type]
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _refresh(self) -> None:
        if self._file is None:
            return
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            try:
                self._set(_read_file(self._file))
            except PasswordError as error:
                log.error("%s; keeping the previous passwords", error)
            self._stamp = stamp

    def _set(self, passwords: list[str]) -> None:
        self._digests = [_digest(password) for password in passwords]

    def matches(self, candidate: str) -> bool:
        """Constant-time check against every accepted password.

        Digests of equal size are compared, so neither the time nor an early mismatch tells how
        long an accepted password is.
        """
        self._refresh()
        given = _digest(candidate)
        matched = False
        for expected in self._digests:
            # No early exit: the time taken does not tell which password came close.
            matched |= hmac.compare_digest(given, expected)
        return matched


def address_key(address: str) -> str:
    """The limiter's key for a client address: an IPv4 address, or the /64 of an IPv6 one.

    One IPv6 host usually holds a whole /64 and may pick any address in it, so a per-address
    limit would not limit it at all. IPv4-mapped addresses count as the IPv4 address.
    """
    try:
        parsed = ipaddress.ip_address(address)
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
                return (1.0 - tokens) / self._refill
            self._store(key, tokens - 1.0, now)
        return 0.0

    def give_back(self, key: str) -> None:
        """Return a token taken by :meth:`take` for a request that was not a wrong password."""
        now = time.monotonic()
        with self._lock:
            self._store(key, min(self._burst, self._tokens(key, now) + 1.0), now)
