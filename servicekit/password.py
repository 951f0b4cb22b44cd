"""The legacy ``/get-status`` password: its source, its check, and slowing down guessing.

The password never comes from the command line (``ps`` would show it): it is read from a file
(``--password-file``) or the ``GPU_MONITOR_PASSWORD`` environment variable, else the old default.
A password file may hold several passwords, one per line, all accepted: that is how a password is
rotated without downtime (add the new one, switch the clients, remove the old). The file is re-read
when it changes. Comparison is constant-time, and an address that keeps guessing wrong is
answered 429 for a while, with bounded bookkeeping.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

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


def _encoded(text: str) -> bytes:
    """The bytes compared: any str encodes, even a lone surrogate (a JSON "\\ud800" escape)."""
    return text.encode("utf-8", errors="surrogatepass")


class PasswordSource:
    """The accepted passwords, re-read from the file when it changes."""

    def __init__(self, *, password_file: Path | None, env_var: str = ENV_VAR) -> None:
        self._file = password_file
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        if password_file is not None:
            self._passwords = _read_file(password_file)
            self._stamp = self._file_stamp()
            self.origin = f"file {password_file}"
        elif os.environ.get(env_var):
            self._passwords = [os.environ[env_var]]
            self.origin = f"environment variable {env_var}"
        else:
            self._passwords = [DEFAULT_PASSWORD]
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
                self._passwords = _read_file(self._file)
            except PasswordError as error:
                log.error("%s; keeping the previous passwords", error)
            self._stamp = stamp

    def matches(self, candidate: str) -> bool:
        """Constant-time check against every accepted password."""
        self._refresh()
        given = _encoded(candidate)
        matched = False
        for password in self._passwords:
            # No early exit: the time taken does not tell which password came close.
            matched |= hmac.compare_digest(given, _encoded(password))
        return matched


class FailureThrottle:
    """Per-address token bucket for wrong passwords, in an LRU of bounded size."""

    def __init__(
        self, *, burst: int = 5, refill_per_second: float = 0.2, max_addresses: int = 4096
    ):
        self._burst = float(burst)
        self._refill = refill_per_second
        self._max = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, stamp = self._buckets.get(address, (self._burst, now))
        return min(self._burst, tokens + (now - stamp) * self._refill)

    def retry_after(self, address: str) -> float:
        """Seconds this address must wait before it may try again; 0 when it may try now."""
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(address, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._refill

    def record_failure(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(address, now)
            self._buckets[address] = (max(0.0, tokens - 1.0), now)
            self._buckets.move_to_end(address)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
