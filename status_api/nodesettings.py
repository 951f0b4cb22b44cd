"""The node-polling settings from the command line, checked before the service starts (the
query engine's are status_api/engine.py's).

Node TLS files must exist and load, ``--node-client-key`` needs ``--node-client-cert``, the basic
auth user and password file go together: every mistake is a start-up error naming the flag, not a
failure at every poll.
"""

from __future__ import annotations

import argparse
import ssl
from typing import TYPE_CHECKING

from servicekit.password import warn_if_exposed
from status_api.credentials import basic_auth, node_password

if TYPE_CHECKING:  # the poller pulls in aiohttp, which "targets" does not need
    from status_api.poller import PollSettings


def poll_settings(args: argparse.Namespace) -> PollSettings:
    """The poller's settings; ValueError names the flag that is wrong."""
    from status_api.poller import PollSettings, ssl_context

    if (args.node_ca_file or args.node_client_cert) and args.node_scheme != "https":
        raise ValueError("--node-ca-file and --node-client-cert need --node-scheme https")
    if args.node_client_key and not args.node_client_cert:
        raise ValueError("--node-client-key needs --node-client-cert")
    if bool(args.node_basic_auth_user) != bool(args.node_basic_auth_password_file):
        raise ValueError("--node-basic-auth-user and --node-basic-auth-password-file go together")
    auth = None
    if args.node_basic_auth_user:
        auth = basic_auth(args.node_basic_auth_user, args.node_basic_auth_password_file)
        warn_if_exposed(args.node_basic_auth_password_file, what="--node-basic-auth-password-file")
    for path in (args.node_ca_file, args.node_client_cert, args.node_client_key):
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
    password = node_password(args.password_file)
    if args.password_file is not None:
        warn_if_exposed(args.password_file, what="--password-file")
    settings = PollSettings(
        password=password,
        scheme=args.node_scheme,
        timeout=args.timeout,
        connect_timeout=min(args.connect_timeout, args.timeout),
        concurrency=int(args.concurrency),
        max_body=int(args.max_body_bytes),
        ca_file=args.node_ca_file,
        client_cert=args.node_client_cert,
        client_key=args.node_client_key,
        basic_auth=auth,
        fetch_power=args.power_interval >= 0,
        power_interval=max(0.0, args.power_interval),
    )
    try:
        ssl_context(settings)  # a bad certificate file fails now, not at every poll
    except (OSError, ssl.SSLError) as error:
        files = ", ".join(
            str(path)
            for path in (args.node_ca_file, args.node_client_cert, args.node_client_key)
            if path is not None
        )
        raise ValueError(f"cannot load the node TLS files ({files}): {error}") from None
    return settings
