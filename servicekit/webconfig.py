"""The web configuration file in the exporter-toolkit format operators use with node_exporter.

Supported keys::

    tls_server_config:
      cert_file: server.crt          # PEM certificate (chain)
      key_file: server.key
      client_ca_file: clients-ca.crt # optional, for client certificates
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12             # TLS10 .. TLS13
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]  # Go's names; TLS 1.2 only
      curve_preferences: [X25519]    # one of CurveP256, CurveP384, CurveP521, X25519
      prefer_server_cipher_suites: true
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      alice: $2y$10$...              # bcrypt ($2a$, $2b$ or htpasswd's $2y$)

Unknown keys are an error, as in exporter-toolkit, so a typo cannot silently disable TLS; so is
every setting that cannot be applied as written (a TLS 1.3 cipher suite, a cipher OpenSSL lacks,
more than one curve). Relative file paths are relative to the configuration file.

:class:`WebConfigFile` re-reads the file, and the certificate files it names, when they change, so
users and certificates rotate without a restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import bcrypt
import yaml

log = logging.getLogger(__name__)

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
# Go's crypto/tls names of the TLS 1.2 suites (tls.CipherSuites() and tls.InsecureCipherSuites(),
# which exporter-toolkit accepts) and OpenSSL's names for them.
_CIPHER_SUITES = {
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# Go accepts these names but ignores them: TLS 1.3 suites are not configurable there either.
_TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
_CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
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
    ciphers: tuple[str, ...] = ()  # OpenSSL names; empty: the ssl module's defaults
    curve: str | None = None  # OpenSSL name
    prefer_server_cipher_suites: bool = True

    def files(self) -> tuple[Path, ...]:
        """The files this section reads, watched for rotation."""
        ca = () if self.client_ca_file is None else (self.client_ca_file,)
        return (self.cert_file, self.key_file, *ca)


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
    if section.get("client_ca_file") and auth == "NoClientCert":
        # exporter-toolkit refuses this too: the CA would check nothing, a likely oversight.
        raise WebConfigError(
            f"{where}: client_ca_file is set without client_auth_type (Client CA's have been "
            "configured without a Client Auth Policy); set client_auth_type to "
            "RequireAndVerifyClientCert or VerifyClientCertIfGiven"
        )
    for key in ("min_version", "max_version"):
        if section.get(key) and section[key] not in _TLS_VERSIONS:
            raise WebConfigError(f"{where}: {key} must be one of {list(_TLS_VERSIONS)}")
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError(f"{where}: prefer_server_cipher_suites must be true or false")
    ca = section.get("client_ca_file")
    return TlsConfig(
        cert_file=base / section["cert_file"],
        key_file=base / section["key_file"],
        client_ca_file=base / ca if ca else None,
        client_auth_type=auth,
        min_version=section.get("min_version") or "TLS12",
        max_version=section.get("max_version"),
        ciphers=_ciphers(section.get("cipher_suites"), where),
        curve=_curve(section.get("curve_preferences"), where),
        prefer_server_cipher_suites=prefer,
    )


def _names(value: Any, key: str, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise WebConfigError(f"{where}: {key} must be a list of names")
    return value


def _ciphers(value: Any, where: str) -> tuple[str, ...]:
    ciphers = []
    for name in _names(value, "cipher_suites", where):
        if name in _TLS13_SUITES:
            raise WebConfigError(
                f"{where}: cipher_suites: {name} is a TLS 1.3 suite; TLS 1.3 suites are not "
                "configurable (in Go either), list only TLS 1.2 suites"
            )
        if name not in _CIPHER_SUITES:
            raise WebConfigError(
                f"{where}: cipher_suites: unknown suite {name!r}; valid: "
                + ", ".join(_CIPHER_SUITES)
            )
        ciphers.append(_CIPHER_SUITES[name])
    return tuple(ciphers)


def _curve(value: Any, where: str) -> str | None:
    names = _names(value, "curve_preferences", where)
    for name in names:
        if name not in _CURVES:
            raise WebConfigError(
                f"{where}: curve_preferences: unknown curve {name!r}; valid: {', '.join(_CURVES)}"
            )
    if len(names) > 1:
        # SSLContext.set_ecdh_curve is the only way to choose groups from Python's ssl module,
        # and it takes one: applying only the first would refuse clients the file allows.
        raise WebConfigError(
            f"{where}: curve_preferences lists {len(names)} curves, but only one can be applied "
            "(Python's ssl module sets a single curve); list exactly one"
        )
    return _CURVES[names[0]] if names else None


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
    _apply_ciphers(context, tls)
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


def _apply_ciphers(context: ssl.SSLContext, tls: TlsConfig) -> None:
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve is not None:
        try:
            context.set_ecdh_curve(tls.curve)
        except (ValueError, ssl.SSLError) as error:
            raise WebConfigError(f"curve_preferences: cannot apply {tls.curve}: {error}") from None
    if not tls.ciphers:
        return
    go_names = {openssl: go for go, openssl in _CIPHER_SUITES.items()}
    try:
        context.set_ciphers(":".join(tls.ciphers))
    except ssl.SSLError:
        available: set[str] = set()
    else:
        available = {cipher["name"] for cipher in context.get_ciphers()}
    # OpenSSL drops the suites it lacks (RC4, 3DES) silently; a dropped suite is an error here.
    missing = [go_names[name] for name in tls.ciphers if name not in available]
    if missing:
        raise WebConfigError(
            f"cipher_suites: {', '.join(missing)} not available in {ssl.OPENSSL_VERSION}"
        )


@dataclass(frozen=True)
class LoadedWebConfig:
    """A validated configuration and the TLS context built from it (None without TLS)."""

    config: WebConfig
    context: ssl.SSLContext | None


def _load(path: Path) -> LoadedWebConfig:
    config = load_web_config(path)
    return LoadedWebConfig(config, None if config.tls is None else ssl_context(config.tls))


_VERIFY_STRENGTH = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 2}


def _loosening(old: WebConfig, new: WebConfig) -> str | None:
    """Why ``new`` may not replace ``old`` while running, or None.

    A file caught half-written can parse and validate yet lack a section: reloads may rotate users
    and certificates but never turn a protection off; that takes a restart.
    """
    if (old.tls is None) != (new.tls is None):
        return "switching between HTTP and HTTPS needs a restart"
    if old.users and not new.users:
        return "turning basic auth off needs a restart"
    if old.tls is not None and new.tls is not None:
        before = _VERIFY_STRENGTH[_CLIENT_AUTH[old.tls.client_auth_type]]
        if _VERIFY_STRENGTH[_CLIENT_AUTH[new.tls.client_auth_type]] < before:
            return "weakening client_auth_type needs a restart"
    return None


class WebConfigFile:
    """The web configuration file, re-read when it or a certificate file it names changes.

    :meth:`current` is called on every connection and request; it looks at the files at most once
    per ``check_every`` seconds (comparing contents, since a rewrite within the file system's
    time-stamp granularity keeps the mtime). A file that fails to load, or would turn a protection
    off, is logged once and the previous configuration stays.
    """

    def __init__(self, path: Path, *, check_every: float = 1.0) -> None:
        self.path = path
        self._check_every = check_every
        self._lock = threading.Lock()
        self._loaded = _load(path)  # raises WebConfigError: a bad file stops the start
        self._fingerprint = self._files_fingerprint(path, self._loaded.config.tls)
        self._checked = time.monotonic()

    @staticmethod
    def _files_fingerprint(path: Path, tls: TlsConfig | None) -> bytes:
        digest = hashlib.sha256()
        for name in (path, *(tls.files() if tls else ())):
            try:
                digest.update(hashlib.sha256(name.read_bytes()).digest())
            except OSError:
                digest.update(b"unreadable")
        return digest.digest()

    def current(self) -> LoadedWebConfig:
        now = time.monotonic()
        # One caller checks while the others go on with the configuration they have.
        if now - self._checked >= self._check_every and self._lock.acquire(blocking=False):
            try:
                if now - self._checked >= self._check_every:
                    self._reload_if_changed()
                    self._checked = time.monotonic()
            finally:
                self._lock.release()
        return self._loaded

    def _reload_if_changed(self) -> None:
        # The fingerprint is taken before loading, so a change during the load is seen next time.
        fingerprint = self._files_fingerprint(self.path, self._loaded.config.tls)
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        try:
            loaded = _load(self.path)
        except WebConfigError as error:
            log.error("web config not reloaded, keeping the previous one: %s", error)
            return
        reason = _loosening(self._loaded.config, loaded.config)
        if reason is not None:
            log.error("web config %s not reloaded, keeping the previous one: %s", self.path, reason)
            return
        old_files = self._loaded.config.tls.files() if self._loaded.config.tls else ()
        if loaded.config.tls is not None and loaded.config.tls.files() != old_files:
            self._fingerprint = self._files_fingerprint(self.path, loaded.config.tls)
        self._loaded = loaded
        log.info("web config %s reloaded", self.path)


_DUMMY_HASH = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=4))


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
