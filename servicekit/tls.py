"""TLS of both services: the web configuration's names mapped to OpenSSL's, the server-side
``SSLContext`` built from them, and the cheroot adapter that hands new connections the current one
and leaves their handshakes to the worker threads.

The mappings are the exporter-toolkit's (Go crypto/tls) names; :mod:`servicekit.webconfig`
validates a file against them and this module applies it.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING, Any

from cheroot import errors
from cheroot.ssl.builtin import BuiltinSSLAdapter

if TYPE_CHECKING:
    from servicekit.webconfig import TlsConfig, WebConfigFile

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

    def __init__(self, source: WebConfigFile) -> None:
        tls = source.current().config.tls
        assert tls is not None
        super().__init__(str(tls.cert_file), str(tls.key_file))
        self._source = source
        self.context = source.current().context

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, Any]]:
        """The connection wrapped for TLS, handshake not started; its environ entries come later."""
        context = self._source.current().context
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
        client certificate refused, a client speaking plain HTTP (closed without an answer, as
        cheroot does).
        """
        # One deadline for the whole handshake (the ssl module's), however slowly bytes trickle in.
        sock.settimeout(timeout)
        try:
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
