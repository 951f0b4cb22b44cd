"""TLS of both services: the settings (:class:`TlsConfig`, with the web configuration's names
mapped to OpenSSL's), the server-side ``SSLContext`` built from them, and the cheroot adapter that
hands new connections the current one and leaves their handshakes to the worker threads.

The names are the exporter-toolkit's (Go crypto/tls); :mod:`servicekit.webconfig` reads a file
into a :class:`TlsConfig` and this module applies it. It imports nothing of the web
configuration: the adapter is handed a function giving the current context.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cheroot import errors
from cheroot.ssl.builtin import BuiltinSSLAdapter

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Python cannot request a client certificate without verifying it, so the two "any cert" modes
# verify against client_ca_file as well; they are accepted so existing files keep working.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
VERIFY_STRENGTH = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 2}
# Go's crypto/tls names of the TLS 1.2 suites (tls.CipherSuites() and tls.InsecureCipherSuites(),
# which exporter-toolkit accepts) and OpenSSL's names for them.
CIPHER_SUITES = {
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
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}


# What Go's net/http answers a client speaking plain HTTP to a TLS port.
PLAIN_HTTP_BODY = b"Client sent an HTTP request to an HTTPS server.\n"
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(PLAIN_HTTP_BODY)
) + PLAIN_HTTP_BODY


def looks_like_http(first: bytes) -> bool:
    """Whether the first byte of a connection starts an HTTP request rather than a TLS record.

    A TLS record starts with its content type (22 for a handshake); every HTTP method starts with
    an upper-case letter.
    """
    return first[:1].isalpha() and first[:1].isupper()


class PlainHttpError(errors.FatalSSLAlert):
    """A client spoke plain HTTP to the TLS port; it is answered :data:`PLAIN_HTTP_ANSWER`."""


@dataclass(frozen=True)
class TlsConfig:
    """The ``tls_server_config`` section, validated, with OpenSSL's names."""

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


class TlsSetupError(Exception):
    """A TLS section that validates but cannot be applied (files, ciphers, curve)."""


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server-side context from the TLS section; TlsSetupError says what cannot be applied."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    if tls.max_version:
        context.maximum_version = TLS_VERSIONS[tls.max_version]
    _apply_ciphers(context, tls)
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.client_ca_file is not None:
            context.load_verify_locations(cafile=str(tls.client_ca_file))
    except (OSError, ssl.SSLError) as error:
        raise TlsSetupError(f"cannot load TLS certificate or key: {error}") from error
    context.verify_mode = CLIENT_AUTH[tls.client_auth_type]
    return context


def _apply_ciphers(context: ssl.SSLContext, tls: TlsConfig) -> None:
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve is not None:
        try:
            context.set_ecdh_curve(tls.curve)
        except (ValueError, ssl.SSLError) as error:
            raise TlsSetupError(f"curve_preferences: cannot apply {tls.curve}: {error}") from None
    if not tls.ciphers:
        return
    go_names = {openssl: go for go, openssl in CIPHER_SUITES.items()}
    try:
        context.set_ciphers(":".join(tls.ciphers))
    except ssl.SSLError:
        available: set[str] = set()
    else:
        available = {cipher["name"] for cipher in context.get_ciphers()}
    # OpenSSL drops the suites it lacks (RC4, 3DES) silently; a dropped suite is an error here.
    missing = [go_names[name] for name in tls.ciphers if name not in available]
    if missing:
        raise TlsSetupError(
            f"cipher_suites: {', '.join(missing)} not available in {ssl.OPENSSL_VERSION}"
        )


class ReloadingSSLAdapter(BuiltinSSLAdapter):
    """cheroot's adapter, with the current context for each new connection and a deferred handshake.

    cheroot's own ``wrap`` does the handshake in the server's one accept thread, under the
    connection timeout (10 s): a client that connects and says nothing holds up every connection
    behind it, each time. Here ``wrap`` only wraps, and the connection's worker thread calls
    :meth:`finish_handshake` under a deadline of its own (see :mod:`servicekit.limits`).
    """

    def __init__(self, tls: TlsConfig, current: Callable[[], ssl.SSLContext | None]) -> None:
        super().__init__(str(tls.cert_file), str(tls.key_file))
        self._current = current
        context = current()
        assert context is not None
        self.context = context

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, Any]]:
        """The connection wrapped for TLS, handshake not started; its environ entries come later."""
        context = self._current()
        assert context is not None  # a TLS configuration never drops its TLS section on reload
        if context is not self.context:
            self.context = context  # the setter also installs cheroot's SNI callback
        try:
            wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as error:  # the peer is gone already
            raise errors.FatalSSLAlert(*error.args) from error
        return wrapped, {}

    def finish_handshake(self, sock: ssl.SSLSocket, *, timeout: float) -> dict[str, Any]:
        """Complete the handshake within ``timeout`` seconds in all; the connection's environ.

        Raises cheroot's ``FatalSSLAlert`` for any failure: a handshake that times out, a reset, a
        client certificate refused; :class:`PlainHttpError` for a client speaking plain HTTP,
        which the caller answers with a 400 saying so, as Go's servers do.
        """
        # One deadline for the whole handshake (the ssl module's), however slowly bytes trickle in.
        deadline = time.monotonic() + timeout
        sock.settimeout(timeout)
        try:
            # Peeked under TLS, on the TCP stream itself: the handshake reads it again.
            first = socket.socket.recv(sock, 1, socket.MSG_PEEK)
            if looks_like_http(first):
                raise PlainHttpError("plain HTTP sent to the TLS port")
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.do_handshake()
        except OSError as error:  # ssl.SSLError included
            raise errors.FatalSSLAlert(*error.args) from error
        return self.get_environ(sock)

    def get_environ(self, sock: ssl.SSLSocket) -> dict[str, Any]:  # type: ignore[override]
        """cheroot's entries, the client certificate's judged by the connection's own context.

        cheroot looks at the adapter's current context, which a reload may have replaced since
        this connection was wrapped.
        """
        environ: dict[str, Any] = super().get_environ(sock)
        certificate = sock.getpeercert()  # empty unless verified: the handshake checks it
        if certificate and environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            environ["SSL_CLIENT_VERIFY"] = "SUCCESS"
            environ.update(self._make_env_cert_dict("SSL_CLIENT", certificate))  # type: ignore[attr-defined]
            der = sock.getpeercert(binary_form=True)
            environ["SSL_CLIENT_CERT"] = ssl.DER_cert_to_PEM_cert(der).strip()  # type: ignore[arg-type]
        return environ
