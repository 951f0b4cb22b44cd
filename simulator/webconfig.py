"""A web configuration for a simulated service: TLS from a throwaway CA, optionally basic auth.

For the load runs and tests that measure the services as a shared cluster runs them, with TLS
and a password in front of ``/metrics``.
"""

from __future__ import annotations

from pathlib import Path

import bcrypt
import trustme
import yaml


def write_web_config(
    directory: Path,
    *,
    basic_auth: tuple[str, str] | None = None,
    tls: bool = True,
    host: str = "127.0.0.1",
) -> tuple[Path, Path]:
    """Write ``web.yml``, its certificate and the CA's; returns (web config, CA file).

    Without ``tls`` the certificate is written but not configured (basic auth alone).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca.issue_cert(host).private_key_and_cert_chain_pem.write_to_path(directory / "server.pem")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    config: dict[str, object] = {}
    if tls:
        config["tls_server_config"] = {"cert_file": "server.pem", "key_file": "server.pem"}
    if basic_auth is not None:
        user, password = basic_auth
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
        config["basic_auth_users"] = {user: hashed}
    path = directory / "web.yml"
    path.write_text(yaml.safe_dump(config))
    return path, ca_file
