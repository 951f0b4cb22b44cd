"""HTTP basic auth of both services: the WSGI middleware checking the web configuration's users.

Passwords are checked against bcrypt hashes; health checks pass without credentials, so probes
need none. Unknown users cost as much as known ones, so timing does not reveal user names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections.abc import Iterable
from typing import Callable

import bcrypt

from servicekit.responses import HEALTH_PATHS, WSGIApp, send_json_error


def _cost(hashed: bytes) -> int:
    """The cost (log2 rounds) of a bcrypt hash ``$2b$NN$...``; 4, the minimum, when unreadable."""
    try:
        return max(4, min(31, int(hashed.split(b"$")[2])))
    except (IndexError, ValueError):
        return 4


def dummy_hash(users: dict[str, bytes]) -> bytes:
    """A hash unknown users are checked against, as costly as the costliest real one.

    A cheaper one would answer an unknown user faster than a known user with a wrong password,
    and so tell a stranger which user names exist.
    """
    cost = max((_cost(hashed) for hashed in users.values()), default=4)
    return bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=cost))


class BasicAuth:
    """WSGI middleware enforcing HTTP basic auth against bcrypt hashes, except health checks.

    bcrypt is slow by design, so a successful check is remembered (by a SHA-256 of user, password
    and hash) in a bounded cache, as exporter-toolkit does; failures are never cached.
    """

    def __init__(self, app: WSGIApp, users: dict[str, bytes], *, cache_size: int = 1024) -> None:
        self._app = app
        self._users = users
        self._dummy = dummy_hash(users)
        self._verified: dict[bytes, None] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _credentials(self, header: str) -> tuple[str, str] | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, separator, password = decoded.partition(":")
        return (user, password) if separator else None

    def user(self, header: str) -> str | None:
        """The user the Authorization header authenticates, or None."""
        credentials = self._credentials(header)
        if credentials is None:
            return None
        user, password = credentials
        hashed = self._users.get(user)
        key = hashlib.sha256(b"\0".join([user.encode(), password.encode(), hashed or b""])).digest()
        with self._lock:
            if hashed is not None and key in self._verified:
                return user
        # Unknown users pay for a check as costly as a real one: timing does not reveal names.
        try:
            matched = bcrypt.checkpw(password.encode("utf-8"), hashed or self._dummy)
        except ValueError:  # bcrypt 5 refuses passwords over 72 bytes
            matched = False
        if not (matched and hashed is not None):
            return None
        with self._lock:
            if len(self._verified) >= self._cache_size:
                self._verified.pop(next(iter(self._verified)))
            self._verified[key] = None
        return user

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in HEALTH_PATHS:
            return self._app(environ, start_response)
        user = self.user(environ.get("HTTP_AUTHORIZATION", ""))
        if user is not None:
            # Tells the app who this is: the legacy password limiter keeps a bucket per user.
            environ["REMOTE_USER"] = user
            environ["AUTH_TYPE"] = "Basic"
            return self._app(environ, start_response)
        challenge = ("WWW-Authenticate", 'Basic realm="gpu-cluster-monitor", charset="UTF-8"')
        return send_json_error(
            start_response, "401 Unauthorized", "authentication required", [challenge]
        )
