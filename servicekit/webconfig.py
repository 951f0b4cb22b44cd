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

:class:`WebConfigFile` re-reads the file, and the certificate files it names, when they change
(through :mod:`servicekit.filewatch`), so users and certificates rotate without a restart; a
reload never turns a protection off. Applying the result is elsewhere: TLS in
:mod:`servicekit.tls`, basic auth in :mod:`servicekit.basicauth`, headers in
:mod:`servicekit.middleware`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from servicekit.filewatch import WatchedFile
from servicekit.tls import (
    CIPHER_SUITES,
    CLIENT_AUTH,
    CURVES,
    TLS13_SUITES,
    TLS_VERSIONS,
    VERIFY_STRENGTH,
    TlsConfig,
    TlsSetupError,
    ssl_context,
)

log = logging.getLogger(__name__)

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


class WebConfigError(Exception):
    """The web configuration file is invalid; the message says where."""


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
    if auth not in CLIENT_AUTH:
        raise WebConfigError(
            f"{where}: client_auth_type {auth!r} is not one of {list(CLIENT_AUTH)}"
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
        if section.get(key) and section[key] not in TLS_VERSIONS:
            raise WebConfigError(f"{where}: {key} must be one of {list(TLS_VERSIONS)}")
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
        if name in TLS13_SUITES:
            raise WebConfigError(
                f"{where}: cipher_suites: {name} is a TLS 1.3 suite; TLS 1.3 suites are not "
                "configurable (in Go either), list only TLS 1.2 suites"
            )
        if name not in CIPHER_SUITES:
            raise WebConfigError(
                f"{where}: cipher_suites: unknown suite {name!r}; valid: "
                + ", ".join(CIPHER_SUITES)
            )
        ciphers.append(CIPHER_SUITES[name])
    return tuple(ciphers)


def _curve(value: Any, where: str) -> str | None:
    names = _names(value, "curve_preferences", where)
    for name in names:
        if name not in CURVES:
            raise WebConfigError(
                f"{where}: curve_preferences: unknown curve {name!r}; valid: {', '.join(CURVES)}"
            )
    if len(names) > 1:
        # SSLContext.set_ecdh_curve is the only way to choose groups from Python's ssl module,
        # and it takes one: applying only the first would refuse clients the file allows.
        raise WebConfigError(
            f"{where}: curve_preferences lists {len(names)} curves, but only one can be applied "
            "(Python's ssl module sets a single curve); list exactly one"
        )
    return CURVES[names[0]] if names else None


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
        _context(config.tls)  # fail at start, not at the first client
    return config


def _context(tls: TlsConfig) -> ssl.SSLContext:
    try:
        return ssl_context(tls)
    except TlsSetupError as error:
        raise WebConfigError(str(error)) from error


@dataclass(frozen=True)
class LoadedWebConfig:
    """A validated configuration and the TLS context built from it (None without TLS)."""

    config: WebConfig
    context: ssl.SSLContext | None


def _load(path: Path) -> LoadedWebConfig:
    config = load_web_config(path)
    return LoadedWebConfig(config, None if config.tls is None else _context(config.tls))


def _loosening(old: LoadedWebConfig, new: LoadedWebConfig) -> str | None:
    """Why ``new`` may not replace ``old`` while running, or None.

    A file caught half-written can parse and validate yet lack a section: reloads may rotate users
    and certificates but never turn a protection off; that takes a restart.
    """
    before, after = old.config, new.config
    if (before.tls is None) != (after.tls is None):
        return "switching between HTTP and HTTPS needs a restart"
    if before.users and not after.users:
        return "turning basic auth off needs a restart"
    if before.tls is not None and after.tls is not None:
        strength = VERIFY_STRENGTH[CLIENT_AUTH[before.tls.client_auth_type]]
        if VERIFY_STRENGTH[CLIENT_AUTH[after.tls.client_auth_type]] < strength:
            return "weakening client_auth_type needs a restart"
    return None


def _certificate_files(loaded: LoadedWebConfig) -> tuple[Path, ...]:
    tls = loaded.config.tls
    return () if tls is None else tls.files()


class WebConfigFile(WatchedFile[LoadedWebConfig]):
    """The web configuration file, re-read when it or a certificate file it names changes.

    :meth:`current` is called on every connection and request; it looks at the files at most once
    per ``check_every`` seconds, comparing contents too, since a rewrite within the file system's
    time-stamp granularity can keep mtime and size. A file that fails to load, or would turn a
    protection off, is logged once and the previous configuration stays. The first load raises
    :class:`WebConfigError`: a bad file stops the start.
    """

    def __init__(self, path: Path, *, check_every: float = 1.0) -> None:
        super().__init__(
            path,
            lambda: _load(path),
            what="web config",
            errors=(WebConfigError,),
            also_watch=_certificate_files,
            compare_content=True,
            min_interval=check_every,
            refuse=_loosening,
            on_reload=lambda old, new: log.info("web config %s reloaded", path),
            logger=log,
        )
