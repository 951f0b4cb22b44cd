"""Web configuration files that must be refused, with the words the refusal must contain.

Used twice: in-process against the parser (tests/unit) and against a starting exporter.
"""

from __future__ import annotations

from typing import Any

BAD_WEB_CONFIGS: list[tuple[dict[str, Any], str]] = [
    ({"basic_auth_user": {"a": "b"}}, "unknown key(s) basic_auth_user"),
    ({"basic_auth_users": {"a": "plain"}}, "not a bcrypt hash"),
    ({"tls_server_config": {"cert_file": "x.pem"}}, "key_file is required"),
    (
        {"tls_server_config": {"cert_file": "x", "key_file": "x", "min_version": "SSL3"}},
        "min_version",
    ),
    ({"tls_server_config": {"cert_file": "missing.pem", "key_file": "missing.pem"}}, "TLS"),
    (
        {"tls_server_config": {"cert_file": "x", "key_file": "x", "client_ca_file": "ca.pem"}},
        "Client CA's have been configured without a Client Auth Policy",
    ),
    (
        {
            "tls_server_config": {
                "cert_file": "x",
                "key_file": "x",
                "client_ca_file": "ca.pem",
                "client_auth_type": "NoClientCert",
            }
        },
        "client_ca_file is set without client_auth_type",
    ),
    (
        {"tls_server_config": {"cert_file": "x", "key_file": "x", "cipher_suites": ["AES"]}},
        "unknown suite 'AES'; valid: TLS_RSA_WITH_RC4_128_SHA",
    ),
    (
        {
            "tls_server_config": {
                "cert_file": "x",
                "key_file": "x",
                "cipher_suites": ["TLS_AES_128_GCM_SHA256"],
            }
        },
        "TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite",
    ),
    (
        {
            "tls_server_config": {
                "cert_file": "x",
                "key_file": "x",
                "cipher_suites": ["TLS_RSA_WITH_RC4_128_SHA"],
            }
        },
        "cipher_suites: TLS_RSA_WITH_RC4_128_SHA not available in OpenSSL",
    ),
    (
        {
            "tls_server_config": {
                "cert_file": "x",
                "key_file": "x",
                "cipher_suites": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            }
        },
        "cipher_suites must be a list of names",
    ),
    (
        {
            "tls_server_config": {
                "cert_file": "x",
                "key_file": "x",
                "curve_preferences": ["P256"],
            }
        },
        "unknown curve 'P256'; valid: CurveP256, CurveP384, CurveP521, X25519",
    ),
    (
        {
            "tls_server_config": {
                "cert_file": "x",
                "key_file": "x",
                "curve_preferences": ["X25519", "CurveP256"],
            }
        },
        "only one can be applied",
    ),
    (
        {
            "tls_server_config": {
                "cert_file": "x",
                "key_file": "x",
                "prefer_server_cipher_suites": "yes",
            }
        },
        "prefer_server_cipher_suites must be true or false",
    ),
]
