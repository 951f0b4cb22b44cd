"""The node-polling and query-engine settings from the command line, checked before the service
starts.

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
    from status_api.promsource import EngineSettings


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


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    """The --prometheus-* options, checked; ValueError names the flag at fault."""
    from yarl import URL

    from status_api.promsource import EngineSettings, ssl_context

    url = URL(args.prometheus_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"--prometheus-url {args.prometheus_url!r}: expected http(s)://host[:port]"
        )
    if url.query_string or url.fragment:
        raise ValueError(f"--prometheus-url {args.prometheus_url!r}: no query or fragment")
    if args.prometheus_ca_file and url.scheme != "https":
        raise ValueError("--prometheus-ca-file needs an https --prometheus-url")
    user, path = args.prometheus_basic_auth_user, args.prometheus_basic_auth_password_file
    if bool(user) != bool(path):
        raise ValueError(
            "--prometheus-basic-auth-user and --prometheus-basic-auth-password-file go together"
        )
    auth = None
    if user:
        auth = basic_auth(user, path, flag="--prometheus-basic-auth-user")
        warn_if_exposed(path, what="--prometheus-basic-auth-password-file")
    settings = EngineSettings(
        url=str(url),
        job=args.prometheus_job,
        timeout=args.prometheus_timeout,
        max_body=int(args.prometheus_max_body_bytes),
        ca_file=args.prometheus_ca_file,
        basic_auth=auth,
    )
    try:
        ssl_context(settings)  # a bad CA file fails now, not at every round
    except (OSError, ssl.SSLError) as error:
        raise ValueError(
            f"cannot load --prometheus-ca-file {args.prometheus_ca_file}: {error}"
        ) from None
    return settings
