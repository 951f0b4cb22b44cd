"""Command line of ``gpu-status-api``; the old api.py flags keep working.

``gpu-status-api -c hosts.txt --web.listen-address :7070 --node_port 7080`` serves the page and
the JSON; ``gpu-status-api targets -c hosts.txt -o targets.json [--watch]`` writes Prometheus
file_sd targets from the same hosts.txt; ``gpu-status-api thresholds [flags] -o thresholds.yml``
writes the service's thresholds as the rule file the recording rules read them from. The flags
are in :mod:`status_api.arguments`. Passwords never come from the command line, where ``ps``
would show them: the node password comes from ``--password-file`` or ``GPU_MONITOR_PASSWORD``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from servicekit.logsetup import configure_logging
from servicekit.memory import limit_malloc_arenas
from servicekit.password import PasswordError
from status_api.arguments import build_parser, build_targets_parser, build_thresholds_parser
from status_api.hosts import Host, HostsFileError, HostsWatcher
from status_api.nodesettings import poll_settings
from status_api.tuning import tune_process

__all__ = [
    "build_parser",
    "build_targets_parser",
    "build_thresholds_parser",
    "main",
    "serve_main",
    "targets_main",
    "thresholds_main",
]

if TYPE_CHECKING:  # the service's modules pull in aiohttp and Flask, which "targets" does not need
    from status_api.cluster import Cluster
    from status_api.engine import EngineSettings
    from status_api.statefile import StateFile
    from status_api.userhistory import UserHistory
    from status_api.vocabulary import Thresholds

log = logging.getLogger("status_api")


def _thresholds(args: argparse.Namespace) -> Thresholds:
    from status_api.vocabulary import Thresholds

    return Thresholds(
        stale_after=args.stale_after,
        offline_after=args.offline_after,
        free_memory_mib=args.free_memory_mib,
        free_utilization=args.free_utilization,
        idle_held_after=args.idle_held_after,
        xid_recent=args.xid_recent,
    )


def _state_file(args: argparse.Namespace) -> StateFile | None:
    from status_api.statefile import StateFile

    return None if args.state_file is None else StateFile(args.state_file)


def _serve(
    cluster: Cluster,
    args: argparse.Namespace,
    *,
    on_stop: Callable[[], None],
    user_history: UserHistory | None = None,
) -> int:
    """Serve the page and the views of ``cluster`` until SIGINT or SIGTERM."""
    from servicekit.runner import run_service
    from status_api.app import create_app

    return run_service(
        create_app(cluster, user_history=user_history),
        listen_address=args.listen_address,
        port=args.port,
        web_config_file=args.web_config_file,
        max_requests=args.max_requests,
        max_requests_per_client=args.max_requests_per_client,
        trusted_proxies=args.trusted_proxies,
        on_stop=on_stop,
    )


def serve_main(args: argparse.Namespace) -> int:
    from servicekit.password import DEFAULT_PASSWORD, ENV_VAR, uses_default
    from status_api.cluster import Cluster
    from status_api.poller import Poller

    if args.offline_after < args.stale_after:
        log.error("--offline-after must not be shorter than --stale-after")
        return 2
    if args.prometheus_url:
        return _serve_from_engine(args)
    try:
        watcher = HostsWatcher(args.config, default_port=args.node_port)
        settings = poll_settings(args)
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
    thresholds = _thresholds(args)
    cluster = Cluster(thresholds=thresholds, interval=args.interval, state_file=_state_file(args))
    cluster.set_hosts(watcher.hosts)

    def hosts() -> list[Host]:
        watcher.refresh()
        return watcher.hosts

    poller = Poller(hosts=hosts, settings=settings, interval=args.interval, on_round=cluster.update)
    poller.start()
    return _serve(cluster, args, on_stop=poller.stop)


def _serve_from_engine(args: argparse.Namespace) -> int:
    """serve_main with --prometheus-url: the cluster comes from the query engine."""
    from status_api.cluster import Cluster
    from status_api.engine import engine_settings
    from status_api.promsource import EngineSource
    from status_api.usage import UsageHistory
    from status_api.userhistory import UserHistory

    try:
        settings = engine_settings(args)
    except (PasswordError, ValueError, OSError) as error:
        log.error("%s", error)
        return 2
    log.info(
        "reading the cluster from %s (job %s); node ages count from their last scrape, so "
        "--stale-after (%g s) should exceed the scrape interval",
        settings.url,
        args.prometheus_job,
        args.stale_after,
    )
    thresholds = _thresholds(args)
    _check_rule_thresholds(settings, thresholds)
    # GPU-hours per user, job and namespace come from the same engine, with the same client.
    history = UsageHistory(settings=lambda: settings)
    cluster = Cluster(
        thresholds=thresholds,
        interval=args.interval,
        usage_history=history,
        state_file=_state_file(args),
    )
    source = EngineSource(
        settings=settings,
        job=args.prometheus_job,
        interval=args.interval,
        cluster=cluster,
        metrics_every=args.power_interval,
    )
    source.start()
    history.start()

    def stop() -> None:
        source.stop()
        history.stop()

    history_of = UserHistory(settings=lambda: settings, known=lambda: cluster.views.user_names)
    return _serve(cluster, args, on_stop=stop, user_history=history_of)


def _check_rule_thresholds(settings: EngineSettings, thresholds: Thresholds) -> None:
    """Warn when the engine's rules count with other thresholds than this service: the page and
    the dashboard would then disagree (README, "Changing a threshold everywhere at once")."""
    from status_api.engine import EngineError, run_queries
    from status_api.vocabulary import THRESHOLD_SERIES, THRESHOLDS_QUERY, threshold_mismatches

    try:
        (samples,) = run_queries(settings, [THRESHOLDS_QUERY], at=time.time())
    except EngineError as error:
        log.debug("rules' thresholds not checked: %s", error)
        return
    problems = threshold_mismatches(samples, thresholds)
    if problems and len(problems) < len(THRESHOLD_SERIES):
        log.warning(
            "the recording rules count with other thresholds than this service (%s): rewrite "
            "them with gpu-status-api thresholds and the same flags",
            "; ".join(problems),
        )
    elif problems:
        log.info("no threshold series in the query engine: the recording rules are not loaded")


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


def thresholds_main(args: argparse.Namespace) -> int:
    from status_api.targets import write_atomically
    from status_api.vocabulary import threshold_rules

    if args.offline_after < args.stale_after:
        log.error("--offline-after must not be shorter than --stale-after")
        return 2
    rules = threshold_rules(_thresholds(args)).encode("utf-8")
    if args.output is None:
        sys.stdout.write(rules.decode("utf-8"))
        return 0
    try:
        if write_atomically(args.output, rules):
            log.info("wrote the thresholds to %s; reload Prometheus to apply them", args.output)
    except OSError as error:
        log.error("cannot write %s: %s", args.output, error)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    limit_malloc_arenas()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["targets"]:
        args = build_targets_parser().parse_args(arguments[1:])
        configure_logging(level=args.log_level)
        return targets_main(args)
    if arguments[:1] == ["thresholds"]:
        args = build_thresholds_parser().parse_args(arguments[1:])
        configure_logging(level=args.log_level)
        return thresholds_main(args)
    if arguments[:1] == ["report"]:
        from status_api.report import main as report_main

        return report_main(arguments[1:])
    if arguments[:1] == ["job"]:
        from status_api.job import main as job_main

        return job_main(arguments[1:])
    if arguments[:1] == ["serve"]:  # explicit form of the default
        arguments = arguments[1:]
    args = build_parser().parse_args(arguments)
    configure_logging(level=args.log_level)
    return serve_main(args)
