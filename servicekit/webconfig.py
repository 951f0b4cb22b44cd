"""The web configuration file in the exporter-toolkit format operators use with node_exporter.

Supported keys::

    tls_server_config:
      cert_file: server.crt          # PEM certificate (chain)
      key_file: server.key
      client_ca_file: clients-ca.crt # optional, for client certificates
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12             # TLS10 .. TLS13
      max_version: TLS13
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      alice: $2y$10$...              # bcrypt ($2a$, $2b$ or htpasswd's $2y$)

Unknown keys are an error, as in exporter-toolkit, so a typo cannot silently disable TLS. Relative
file paths are relative to the configuration file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import bcrypt
import yaml

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Python cannot request a client certificate without verifying it, so the two "any cert" modes
# verify against client_ca_file as well; they are accepted so existing files keep working.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
}
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
# Paths that health checkers (systemd, Kubernetes probes) reach without credentials.
UNAUTHENTICATED_PATHS = frozenset({"/-/healthy", "/-/ready"})


class WebConfigError(Exception):
    """The web configuration file is invalid; the message says where."""


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str | None = None


@dataclass(frozen=True)
class WebConfig:
    tls: TlsConfig | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where} must be a mapping")
    return value


def _unknown(keys: Iterable[str], allowed: set[str], where: str) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise WebConfigError(f"{where}: unknown key(s) {', '.join(extra)}")


def _tls(section: dict[str, Any], base: Path, where: str) -> TlsConfig | None:
    if not section:
        return None
    _unknown(section, _TLS_KEYS, where)
    for required in ("cert_file", "key_file"):
        if not section.get(required):
            raise WebConfigError(f"{where}: {required} is required")
    auth = section.get("client_auth_type") or "NoClientCert"
    if auth not in _CLIENT_AUTH:
        raise WebConfigError(
            f"{where}: client_auth_type {auth!r} is not one of {list(_CLIENT_AUTH)}"
        )
    if auth != "NoClientCert" and not section.get("client_ca_file"):
        raise WebConfigError(f"{where}: client_auth_type {auth} needs client_ca_file")
    for key in ("min_version", "max_version"):
        if section.get(key) and section[key] not in _TLS_VERSIONS:
            raise WebConfigError(f"{where}: {key} must be one of {list(_TLS_VERSIONS)}")
    ca = section.get("client_ca_file")
    return TlsConfig(
        cert_file=base / section["cert_file"],
        key_file=base / section["key_file"],
        client_ca_file=base / ca if ca else None,
        client_auth_type=auth,
        min_version=section.get("min_version") or "TLS12",
        max_version=section.get("max_version"),
    )


def _users(section: dict[str, Any], where: str) -> dict[str, bytes]:
    users = {}
    for user, hashed in section.items():
        text = str(hashed)
        if not text.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{where}: the hash of user {user!r} is not a bcrypt hash")
        # $2y$ (htpasswd) is the same algorithm as $2b$; normalise for the bcrypt library.
        users[str(user)] = ("$2b$" + text[4:]).encode("ascii")
    return users


def load_web_config(path: Path) -> WebConfig:
    """Parse and validate the file; certificate files are checked by :func:`ssl_context`."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise WebConfigError(f"cannot read web config {path}: {error}") from error
    except yaml.YAMLError as error:
        raise WebConfigError(f"web config {path} is not valid YAML: {error}") from error
    document = _mapping(document, str(path))
    _unknown(document, _TOP_KEYS, str(path))
    base = path.parent
    http = _mapping(document.get("http_server_config"), f"{path}: http_server_config")
    headers = {str(k): str(v) for k, v in _mapping(http.get("headers"), "headers").items()}
    config = WebConfig(
        tls=_tls(
            _mapping(document.get("tls_server_config"), "tls"), base, f"{path}: tls_server_config"
        ),
        users=_users(
            _mapping(document.get("basic_auth_users"), "users"), f"{path}: basic_auth_users"
        ),
        headers=headers,
    )
    if config.tls is not None:
        ssl_context(config.tls)  # fail at start, not at the first client
    return config


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server-side context from the TLS section."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSIONS[tls.min_version]
    if tls.max_version:
        context.maximum_version = _TLS_VERSIONS[tls.max_version]
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.client_ca_file is not None:
            context.load_verify_locations(cafile=str(tls.client_ca_file))
    except (OSError, ssl.SSLError) as error:
        raise WebConfigError(f"cannot load TLS certificate or key: {error}") from error
    context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    return context


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
        if environ.get("PATH_INFO") in UNAUTHENTICATED_PATHS:
            return self._app(environ, start_response)
        user = self.user(environ.get("HTTP_AUTHORIZATION", ""))
        if user is not None:
            # Tells the app who this is: the legacy password limiter keeps a bucket per user.
            environ["REMOTE_USER"] = user
            environ["AUTH_TYPE"] = "Basic"
            return self._app(environ, start_response)
        body = b'{"error": "authentication required"}'
        start_response(
            "401 Unauthorized",
            [
                ("WWW-Authenticate", 'Basic realm="gpu-cluster-monitor", charset="UTF-8"'),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]
