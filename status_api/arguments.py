"""The command lines of ``gpu-status-api`` (serve), ``gpu-status-api targets`` and
``gpu-status-api thresholds``: flags only.

The flags follow node_exporter (``--web.listen-address``, ``--web.config.file``, ``--log.level``);
the old api.py names (``-c``, ``--port``, ``--node_port``, ``--listen-address``, ``--disable_log``)
keep working as aliases.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from servicekit.cliargs import add_log_flags, add_web_flags, finite, positive, tcp_port
from status_api import __version__
from status_api.hosts import DEFAULT_NODE_PORT


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, default=Path("hosts.txt"),
        help="hosts file, one node a line (default hosts.txt)",
    )  # fmt: skip
    parser.add_argument(
        "--node_port", "--node-port", dest="node_port", type=tcp_port(), default=DEFAULT_NODE_PORT,
        help=f"exporter port of nodes written without one (default {DEFAULT_NODE_PORT})",
    )  # fmt: skip
    add_log_flags(parser)


def _node_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("polling the nodes")
    group.add_argument(
        "--interval", type=positive(float), default=3.0,
        help="seconds between polling rounds (default 3)",
    )  # fmt: skip
    group.add_argument(
        "--timeout", type=positive(float), default=1.5,
        help="seconds one node may take to answer, all included (default 1.5)",
    )  # fmt: skip
    group.add_argument(
        "--connect-timeout", type=positive(float), default=1.0,
        help="seconds to establish a connection (default 1)",
    )  # fmt: skip
    group.add_argument(
        "--concurrency", type=positive(int), default=1024,
        help="nodes polled at the same time (default 1024)",
    )  # fmt: skip
    group.add_argument(
        "--max-body-bytes", type=positive(int), default=4 * 1024 * 1024,
        help="largest answer read from a node (default 4 MiB)",
    )  # fmt: skip
    group.add_argument(
        "--password-file", type=Path,
        help="file whose first line is the nodes' /get-status password "
        "(else $GPU_MONITOR_PASSWORD, else 8888)",
    )  # fmt: skip
    group.add_argument(
        "--node-scheme", choices=("http", "https"), default="http",
        help="how to reach the exporters (default http)",
    )  # fmt: skip
    group.add_argument(
        "--power-interval", type=finite, default=10.0,
        help="seconds between reads of a node's /metrics for power, health, SM utilization and "
        "MIG devices, also from --prometheus-url (default 10; 0: every round; negative: never)",
    )  # fmt: skip
    group.add_argument("--node-ca-file", type=Path, help="CA certificate(s) to trust for https")
    group.add_argument("--node-client-cert", type=Path, help="client certificate for https")
    group.add_argument("--node-client-key", type=Path, help="key of --node-client-cert")
    group.add_argument("--node-basic-auth-user", help="basic-auth user for the exporters")
    group.add_argument(
        "--node-basic-auth-password-file", type=Path,
        help="file whose first line is the basic-auth password for the exporters",
    )  # fmt: skip


def _state_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("node states and free GPUs")
    group.add_argument(
        "--stale-after", type=positive(float), default=10.0,
        help="seconds after the last good poll a node stops being online (default 10)",
    )  # fmt: skip
    group.add_argument(
        "--offline-after", type=positive(float), default=30.0,
        help="seconds after the last good poll a node is offline (default 30)",
    )  # fmt: skip
    group.add_argument(
        "--free-memory-mib", type=int, default=512,
        help="a GPU with no process and at most this memory used is free (default 512)",
    )  # fmt: skip
    group.add_argument(
        "--free-utilization", type=int, default=5,
        help="... and utilization below this percentage (default 5)",
    )  # fmt: skip
    group.add_argument(
        "--idle-held-after", type=positive(float), default=1800.0,
        help="seconds a GPU's processes may hold memory without computing before the GPU is "
        "shown as idle but held (default 1800)",
    )  # fmt: skip
    group.add_argument(
        "--xid-recent", type=positive(float), default=3600.0,
        help="seconds an XID error keeps its GPU sick or warning (default 3600)",
    )  # fmt: skip
    group.add_argument(
        "--state-file", type=Path,
        help="file keeping idle-held periods across restarts, written atomically after a round "
        "that changed them (default: none; the systemd unit passes "
        "/var/lib/gpu-status-api/state.json)",
    )  # fmt: skip


def _engine_options(parser: argparse.ArgumentParser) -> None:
    from status_api.engine import MIB, add_engine_flags  # aiohttp: not for "targets"

    group = parser.add_argument_group(
        "reading the cluster from Prometheus (or VictoriaMetrics) instead of polling"
    )
    add_engine_flags(
        group,
        url_help="base URL of a Prometheus-compatible query API (http://host:9090): serve the "
        "cluster from its /api/v1/query every --interval; hosts.txt and the node options "
        "are then unused",
        timeout=5.0,
        timeout_help="seconds one round of queries may take, all included",
        max_body=64 * MIB,
    )
    group.add_argument(
        "--prometheus-job", default="gpu",
        help="scrape job of the exporters (default gpu, as in prometheus/prometheus.yml)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-status-api",
        description="Poll every node of hosts.txt and serve the cluster page and JSON. "
        "'gpu-status-api targets --help' for the Prometheus target generator.",
    )
    _common(parser)
    add_web_flags(parser, default_port=7070)
    _node_options(parser)
    _engine_options(parser)
    _state_options(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def build_targets_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-status-api targets",
        description="Write hosts.txt as a Prometheus file_sd target file (JSON).",
    )
    _common(parser)
    parser.add_argument(
        "-o", "--output", type=Path,
        help="target file to write (atomically); without it, print to standard output",
    )  # fmt: skip
    parser.add_argument(
        "--watch",
        action="store_true",
        help="keep running and rewrite the file when hosts.txt changes",
    )
    parser.add_argument(
        "--watch-interval", type=positive(float), default=2.0,
        help="seconds between checks of hosts.txt with --watch (default 2)",
    )  # fmt: skip
    return parser


def build_thresholds_parser() -> argparse.ArgumentParser:
    """The thresholds of the service, with its flags and defaults, written as Prometheus rules."""
    parser = argparse.ArgumentParser(
        prog="gpu-status-api thresholds",
        description="Write the thresholds behind free, idle-held, sick and stale as a Prometheus "
        "rule file (prometheus/rules/thresholds.yml), from the flags gpu-status-api takes, so "
        "that the recording rules, alerts and dashboard count as the service does.",
    )
    add_log_flags(parser)
    parser.add_argument(
        "-o", "--output", type=Path,
        help="rule file to write (atomically); without it, print to standard output",
    )  # fmt: skip
    _state_options(parser)
    return parser
