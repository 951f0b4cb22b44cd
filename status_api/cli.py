"""Command line of ``gpu-status-api``; the old api.py flags keep working.

``gpu-status-api -c hosts.txt --port 7070 --node_port 7080`` serves the page and the JSON;
``gpu-status-api targets -c hosts.txt -o targets.json [--watch]`` writes Prometheus file_sd
targets from the same hosts.txt. Passwords never come from the command line, where ``ps`` would
show them: the node password comes from ``--password-file`` or ``GPU_MONITOR_PASSWORD``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from servicekit.cliargs import finite, positive, tcp_port
from servicekit.httpserver import DEFAULT_MAX_REQUESTS, DEFAULT_MAX_REQUESTS_PER_CLIENT
from servicekit.logsetup import configure_logging
from servicekit.password import PasswordError, load_password, warn_if_exposed
from status_api import __version__
from status_api.hosts import DEFAULT_NODE_PORT, Host, HostsFileError, HostsWatcher

if TYPE_CHECKING:  # the poller pulls in aiohttp, which "targets" does not need
    from status_api.poller import PollSettings

log = logging.getLogger("status_api")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, default=Path("hosts.txt"),
        help="hosts file, one node a line (default hosts.txt)",
    )  # fmt: skip
    parser.add_argument(
        "--node_port", "--node-port", dest="node_port", type=tcp_port(), default=DEFAULT_NODE_PORT,
        help=f"exporter port of nodes written without one (default {DEFAULT_NODE_PORT})",
    )  # fmt: skip
    parser.add_argument("--disable_log", action="store_true", help="log warnings and errors only")


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
        help="seconds between reads of a node's /metrics for GPU power (default 10; 0: every "
        "round; negative: never)",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-status-api",
        description="Poll every node of hosts.txt and serve the cluster page and JSON. "
        "'gpu-status-api targets --help' for the Prometheus target generator.",
    )
    _common(parser)
    parser.add_argument(
        "--port", type=tcp_port(), default=7070, help="port to listen on (default 7070)"
    )
    parser.add_argument(
        "--listen-address", default="0.0.0.0", help="address to listen on (default all)"
    )
    parser.add_argument(
        "--web-config-file", type=Path, help="exporter-toolkit web config: TLS and basic auth"
    )
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
    _node_options(parser)
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


def _first_line(path: Path, what: str) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from None
    for line in lines:
        if line:
            return line
    raise ValueError(f"{what} {path} is empty")


class _Reloaded:
    """A password read from a file, re-read when the file changes (so a rotation needs no restart).

    ``load`` reads it; a file that turns unreadable or empty keeps the previous password, with an
    error in the log, so a half-done edit does not lock every node out.
    """

    def __init__(self, path: Path | None, load: Callable[[], str]) -> None:
        self._path = path
        self._load = load
        self._stamp = self._file_stamp()
        self._value = load()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self._path is None:
            return None
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        # The inode too: an editor or a rename replaces the file, maybe within one mtime tick.
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def __call__(self) -> str:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._value = self._load()
            except (PasswordError, ValueError) as error:
                log.error("%s; keeping the previous password", error)
        return self._value


def _node_password(path: Path | None) -> _Reloaded:
    """The /get-status password: ``path``'s first line, else the environment, else the default."""
    return _Reloaded(path, lambda: load_password(password_file=path))


def _basic_auth(user: str, path: Path) -> Callable[[], tuple[str, str]]:
    """The exporters' basic-auth credentials, the password re-read when its file changes."""
    if ":" in user:  # the header joins user and password with ":"
        raise ValueError(f"--node-basic-auth-user {user!r} must not contain ':'")
    password = _Reloaded(path, lambda: _first_line(path, "basic-auth password file"))
    return lambda: (user, password())


def _raise_file_limit() -> None:
    """Keep-alive sockets to every node need descriptors; use the hard limit if allowed."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard))


def tune_process() -> None:
    """Interpreter settings for a process that polls many nodes and serves at the same time."""
    _raise_file_limit()
    # The poller thread is CPU-bound for a while every round; handing the GIL over more often
    # than the default 5 ms keeps the request threads' latency low meanwhile.
    sys.setswitchinterval(0.0005)
    # A round allocates many short-lived containers (every node's JSON); with the default
    # thresholds the cyclic collector ran so often it took half of a round's CPU at 1000 nodes.
    gc.set_threshold(50_000, 20, 100)


def _poll_settings(args: argparse.Namespace) -> PollSettings:
    from status_api.poller import PollSettings, ssl_context

    if (args.node_ca_file or args.node_client_cert) and args.node_scheme != "https":
        raise ValueError("--node-ca-file and --node-client-cert need --node-scheme https")
    if args.node_client_key and not args.node_client_cert:
        raise ValueError("--node-client-key needs --node-client-cert")
    if bool(args.node_basic_auth_user) != bool(args.node_basic_auth_password_file):
        raise ValueError("--node-basic-auth-user and --node-basic-auth-password-file go together")
    auth = None
    if args.node_basic_auth_user:
        auth = _basic_auth(args.node_basic_auth_user, args.node_basic_auth_password_file)
        warn_if_exposed(args.node_basic_auth_password_file, what="--node-basic-auth-password-file")
    for path in (args.node_ca_file, args.node_client_cert, args.node_client_key):
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
    password = _node_password(args.password_file)
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


def serve_main(args: argparse.Namespace) -> int:
    from servicekit.httpserver import run_service
    from servicekit.password import DEFAULT_PASSWORD, ENV_VAR, PasswordError, uses_default
    from status_api.app import create_app
    from status_api.cluster import Cluster, Thresholds
    from status_api.poller import Poller

    if args.offline_after < args.stale_after:
        log.error("--offline-after must not be shorter than --stale-after")
        return 2
    try:
        watcher = HostsWatcher(args.config, default_port=args.node_port)
        settings = _poll_settings(args)
    except (HostsFileError, PasswordError, ValueError, OSError) as error:
        log.error("%s", error)
        return 2
    log.info("%d nodes from %s", len(watcher.hosts), args.config)
    if uses_default(password_file=args.password_file):
        log.warning(
            "no node password configured: the nodes are polled with the old default %s; set "
            "--password-file or %s",
            DEFAULT_PASSWORD,
            ENV_VAR,
        )
    tune_process()
    thresholds = Thresholds(
        stale_after=args.stale_after,
        offline_after=args.offline_after,
        free_memory_mib=args.free_memory_mib,
        free_utilization=args.free_utilization,
        idle_held_after=args.idle_held_after,
        xid_recent=args.xid_recent,
    )
    cluster = Cluster(thresholds=thresholds, interval=args.interval)
    cluster.set_hosts(watcher.hosts)

    def hosts() -> list[Host]:
        watcher.refresh()
        return watcher.hosts

    poller = Poller(hosts=hosts, settings=settings, interval=args.interval, on_round=cluster.update)
    poller.start()
    return run_service(
        create_app(cluster),
        listen_address=args.listen_address,
        port=args.port,
        web_config_file=args.web_config_file,
        max_requests=args.max_requests,
        max_requests_per_client=args.max_requests_per_client,
        on_stop=poller.stop,
    )


def targets_main(args: argparse.Namespace) -> int:
    from status_api.targets import generate, render

    if args.output is None:
        if args.watch:
            log.error("--watch needs --output")
            return 2
        try:
            hosts = HostsWatcher(args.config, default_port=args.node_port).hosts
        except HostsFileError as error:
            log.error("%s", error)
            return 2
        sys.stdout.write(render(hosts).decode("utf-8"))
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        generate(
            args.config,
            args.output,
            default_port=args.node_port,
            watch=args.watch,
            interval=args.watch_interval,
            stop=stop,
        )
    except HostsFileError as error:
        log.error("%s", error)
        return 2
    except OSError as error:
        log.error("cannot write %s: %s", args.output, error)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["targets"]:
        args = build_targets_parser().parse_args(arguments[1:])
        configure_logging(quiet=args.disable_log)
        return targets_main(args)
    if arguments[:1] == ["serve"]:  # explicit form of the default
        arguments = arguments[1:]
    args = build_parser().parse_args(arguments)
    configure_logging(quiet=args.disable_log)
    return serve_main(args)
