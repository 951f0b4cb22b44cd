"""The command-line flags both services share, and argument types: finite, positive and
non-negative numbers, ports.

Flag names follow node_exporter (``--web.listen-address``, ``--web.config.file``,
``--log.level``); the names older releases used stay as aliases, so no command line breaks.

Every float option of the services is a number of seconds that ends up in a timer, so a
float must be finite (``nan`` compares false with everything and turns a wait into a busy loop;
``inf`` makes the wait raise) and no larger than the longest wait a timer takes. The report's
prices and emission factors are finite and 0 or more, without that bound (``non_negative``).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import threading
from pathlib import Path
from typing import Any, Callable

from servicekit.limits import DEFAULT_MAX_REQUESTS_PER_CLIENT
from servicekit.proxies import ProxyListError, TrustedProxies, parse_networks
from servicekit.runner import DEFAULT_MAX_REQUESTS

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}

# The longest timeout threading (and so every wait in these services) accepts: about 292 years.
MAX_SECONDS = threading.TIMEOUT_MAX


def _number(kind: type, text: str, *, seconds: bool = True) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if kind is float:
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if seconds and abs(value) > MAX_SECONDS:
            raise argparse.ArgumentTypeError(f"{text!r} is over {MAX_SECONDS:.0f} seconds")
    return value


def finite(text: str) -> float:
    """An argparse type accepting any finite float, zero and negative numbers included."""
    return _number(float, text)


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type accepting numbers of ``kind`` (int or float) greater than 0."""

    def parse(text: str) -> float:
        value = _number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


def non_negative(kind: type) -> Callable[[str], float]:
    """An argparse type accepting finite numbers of ``kind`` (int or float) of 0 or more.

    For quantities that are not waits (a price, grams per kWh): no timer bound.
    """

    def parse(text: str) -> float:
        value = _number(kind, text, seconds=False)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
        return value

    return parse


def tcp_port(*, allow_any: bool = False) -> Callable[[str], int]:
    """An argparse type for a TCP port; with ``allow_any``, 0 asks the OS for a free one."""
    lowest = 0 if allow_any else 1

    def parse(text: str) -> int:
        if not text.isdigit() or not lowest <= int(text) <= 65535:
            raise argparse.ArgumentTypeError(f"{text!r} is not a port number ({lowest}-65535)")
        return int(text)

    return parse


def listen_address(*, allow_any_port: bool = False) -> Callable[[str], tuple[str, int]]:
    """An argparse type for node_exporter's ``host:port``: ``:7080``, ``10.0.0.1:7080``,
    ``[::1]:7080``; an empty host is every interface. Gives (host without brackets, port)."""
    port_type = tcp_port(allow_any=allow_any_port)

    def parse(text: str) -> tuple[str, int]:
        host, separator, port = text.rpartition(":")
        if not separator:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not host:port (e.g. :7080, 127.0.0.1:7080, [::1]:7080)"
            )
        if host.startswith("[") or host.endswith("]"):
            inner = host[1:-1]
            try:
                ipaddress.IPv6Address(inner)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{text!r}: {host!r} is not a bracketed IPv6 address"
                ) from None
            host = inner
        elif ":" in host:
            raise argparse.ArgumentTypeError(
                f"{text!r}: an IPv6 address goes in brackets, e.g. [::1]:7080"
            )
        return host, port_type(port)

    return parse


def trusted_proxies(text: str) -> TrustedProxies:
    """An argparse type for ``CIDR[,CIDR]``: the reverse proxies whose forwarding is believed."""
    try:
        return TrustedProxies(parse_networks(text))
    except ProxyListError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _SetListenAddress(argparse.Action):
    """``--web.listen-address`` sets both parts the old ``--listen-address`` and ``--port`` set."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        namespace.listen_address, namespace.port = values


def add_web_flags(
    parser: argparse.ArgumentParser,
    *,
    default_port: int,
    allow_any_port: bool = False,
    listen_help: str = "",
) -> None:
    """The listening and web-server flags: address, web config, request limits.

    ``--web.listen-address`` gives host and port at once; ``--listen-address`` and ``--port`` set
    one part each; where several are given, the later one on the command line wins for its part.
    The result is always ``args.listen_address`` and ``args.port``.
    """
    parser.add_argument(
        "--web.listen-address", action=_SetListenAddress, default=argparse.SUPPRESS,
        type=listen_address(allow_any_port=allow_any_port), metavar="[HOST]:PORT",
        help=f"address and port to listen on{listen_help} (default :{default_port}, every "
        "interface); IPv6 in brackets, e.g. [::1]:PORT",
    )  # fmt: skip
    parser.add_argument(
        "--listen-address", default="0.0.0.0", metavar="HOST",
        help="the host part of --web.listen-address alone (older flag)",
    )  # fmt: skip
    parser.add_argument(
        "--port", type=tcp_port(allow_any=allow_any_port), default=default_port,
        help="the port part of --web.listen-address alone (older flag)",
    )  # fmt: skip
    parser.add_argument(
        "--web.config.file", "--web-config-file", dest="web_config_file", type=Path,
        metavar="FILE", help="exporter-toolkit web config: TLS and basic auth",
    )  # fmt: skip
    parser.add_argument(
        "--web.max-requests", dest="max_requests", type=positive(int),
        default=DEFAULT_MAX_REQUESTS,
        help=f"requests served at once; more get 503 (default {DEFAULT_MAX_REQUESTS})",
    )  # fmt: skip
    parser.add_argument(
        "--web.max-requests-per-client", dest="max_requests_per_client", type=positive(int),
        default=DEFAULT_MAX_REQUESTS_PER_CLIENT,
        help="requests served at once for one address (IPv6: one /64); more get 503 "
        f"(default {DEFAULT_MAX_REQUESTS_PER_CLIENT})",
    )  # fmt: skip
    parser.add_argument(
        "--web.trusted-proxies", dest="trusted_proxies", type=trusted_proxies,
        metavar="CIDR[,CIDR]",
        help="reverse proxies whose X-Forwarded-For or Forwarded header names the client: the "
        "per-client limits count that client (default: none, headers ignored)",
    )  # fmt: skip


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    """``--log.level``, and the old ``--disable_log`` meaning ``--log.level warn``."""
    parser.add_argument(
        "--log.level", dest="log_level", choices=tuple(LOG_LEVELS), default="info",
        help="log this level and above (default info)",
    )  # fmt: skip
    parser.add_argument(
        "--disable_log", dest="log_level", action="store_const", const="warn",
        help="the same as --log.level warn (older flag)",
    )  # fmt: skip
