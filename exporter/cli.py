"""Command line of ``gpu-exporter``; the old node_info.py flags keep working.

Flags follow node_exporter (``--web.listen-address``, ``--web.config.file``, ``--log.level``);
``--port``, ``--listen-address``, ``--disable_log`` and ``--debug`` behave as before. The legacy
password is never taken
from the command line, where ``ps`` would show it: use ``--password-file`` or the
``GPU_MONITOR_PASSWORD`` environment variable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter import __version__
from exporter.gpm import GpmCollector
from exporter.kubelet import DEFAULT_SOCKET, PodResourcesClient
from exporter.legacy import legacy_status_json
from exporter.processes import DEFAULT_MAX_COMMAND_LENGTH, ProcessResolver
from exporter.sampler import Sampler
from servicekit.cliargs import add_log_flags, add_web_flags, positive
from servicekit.logsetup import configure_logging
from servicekit.memory import limit_malloc_arenas
from servicekit.password import ENV_VAR, PasswordError, PasswordSource, warn_if_exposed

log = logging.getLogger("exporter")

GPM_BASE_INTERVALS = 3  # GPM figures are never computed from a sample older than this many


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-exporter",
        description="Export NVIDIA GPU metrics for Prometheus and the legacy /get-status JSON.",
        allow_abbrev=False,  # "--password" must not silently mean "--password-file"
    )
    add_web_flags(
        parser,
        default_port=7080,
        allow_any_port=True,
        listen_help="; Prometheus must reach it",
    )
    parser.add_argument(
        "--interval", type=positive(float), default=2.0, help="seconds between samples (default 2)"
    )
    parser.add_argument(
        "--nvml-timeout",
        type=positive(float),
        default=5.0,
        help="seconds to wait for one GPU's NVML reads before reporting it down (default 5)",
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        help=f"file with the /get-status password(s), one per line (else ${ENV_VAR}, else 8888)",
    )
    parser.add_argument(
        "--no-processes", action="store_true", help="do not report per-process series or users"
    )
    parser.add_argument(
        "--metrics.command-line",
        dest="metrics_command_line",
        action="store_true",
        help="put processes' command lines on /metrics (gpu_process_info's command label); "
        "without it they are there only when the web config requires basic auth, since a "
        "command line can hold secrets. /get-status always has them.",
    )
    parser.add_argument(
        "--metrics.dcgm-names",
        dest="dcgm_names",
        action="store_true",
        help="also publish dcgm-exporter's metric names, units and labels (DCGM_FI_DEV_GPU_UTIL "
        "in %%, DCGM_FI_DEV_FB_USED in MiB, ...), so dashboards and alerts written for "
        "dcgm-exporter work unchanged",
    )
    parser.add_argument(
        "--collector.kubelet.pod-resources-socket",
        dest="pod_resources_socket",
        default="",
        metavar="PATH",
        help="the kubelet's pod-resources socket, to name the pod holding each GPU (in "
        f"Kubernetes: mount the directory of {DEFAULT_SOCKET} read-only and pass it); "
        "default empty: off",
    )
    parser.add_argument(
        "--max-command-length",
        type=positive(int),
        default=DEFAULT_MAX_COMMAND_LENGTH,
        help=f"cut command lines to this many characters (default {DEFAULT_MAX_COMMAND_LENGTH})",
    )
    parser.add_argument(
        "--collector.pcie-throughput",
        dest="pcie_throughput",
        action="store_true",
        help="export PCIe TX/RX throughput (NVML samples the link for 20 ms per GPU and pass)",
    )
    parser.add_argument(
        "--collector.gpm",
        dest="gpm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GPU Performance Monitoring figures (SM, tensor and FP pipe activity, DRAM, PCIe "
        "and NVLink traffic) on the GPUs that have it, Hopper and newer (default on; "
        "--no-collector.gpm turns it off)",
    )
    parser.add_argument("--hostname", help="host name to report (default: this machine's)")
    add_log_flags(parser)
    parser.add_argument(
        "--debug", action="store_true", help="print the /get-status JSON once and exit"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Caught only to explain why they are refused: ps shows every argument to every user.
    parser.add_argument("--password", "--passwd", dest="password_argument", help=argparse.SUPPRESS)
    return parser


def _pod_resources(args: argparse.Namespace) -> PodResourcesClient | None:
    if args.no_processes or not args.pod_resources_socket:
        return None
    return PodResourcesClient(socket_path=args.pod_resources_socket)


def _gpm(args: argparse.Namespace) -> GpmCollector | None:
    if not args.gpm:
        return None
    # A base sample older than a few passes would average over a time nobody asked about.
    return GpmCollector(max_base_age=GPM_BASE_INTERVALS * args.interval)


def _command_lines_on_metrics(args: argparse.Namespace) -> bool:
    """Whether /metrics may show command lines: asked for, or only readable with a password.

    A command line can hold a token or a password passed as an argument; /get-status shows it
    behind its password, so /metrics shows it only behind one too unless the operator says so.
    """
    from servicekit.webconfig import load_web_config

    if args.no_processes:
        return False
    if args.metrics_command_line:
        log.info("command lines are published on /metrics (--metrics.command-line)")
        return True
    if args.web_config_file and load_web_config(args.web_config_file).users:
        log.info("command lines are published on /metrics, which requires basic auth")
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    limit_malloc_arenas()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.password_argument is not None:
        parser.error(
            f"passwords are not taken on the command line (ps shows it to every user); "
            f"use --password-file or {ENV_VAR}"
        )
    configure_logging(level=args.log_level)
    sampler = Sampler(
        interval=args.interval,
        gpu_timeout=args.nvml_timeout,
        include_processes=not args.no_processes,
        hostname=args.hostname,
        resolver=ProcessResolver(max_command_length=args.max_command_length),
        pcie_throughput=args.pcie_throughput,
        pod_resources=_pod_resources(args),
        gpm=_gpm(args),
        # dcgm-exporter names the pod holding a GPU on its series, processes or not
        pods_of_idle_gpus=args.dcgm_names,
    )
    if args.debug:
        sys.stdout.write(legacy_status_json(sampler.sample_once()).decode() + "\n")
        sampler.stop()
        return 0
    try:
        passwords = PasswordSource(password_file=args.password_file)
    except PasswordError as error:
        log.error("%s", error)
        return 2
    if args.password_file is not None:
        warn_if_exposed(args.password_file, what="--password-file")
    if passwords.is_default:
        log.warning(
            "no password configured: /get-status accepts the old default; set --password-file "
            "or %s",
            ENV_VAR,
        )
    # Imported here so --debug does not pay for the HTTP stack.
    from exporter.app import ExporterApp
    from servicekit.runner import run_service
    from servicekit.webconfig import WebConfigError

    try:
        commands = _command_lines_on_metrics(args)
    except WebConfigError as error:
        log.error("%s", error)
        return 2
    app = ExporterApp(
        latest=sampler.latest,
        ready=lambda: sampler.ready,
        passwords=passwords,
        include_processes=not args.no_processes,
        include_commands=commands,
        dcgm_names=args.dcgm_names,
    )
    sampler.start()
    return run_service(
        app,
        listen_address=args.listen_address,
        port=args.port,
        web_config_file=args.web_config_file,
        max_requests=args.max_requests,
        max_requests_per_client=args.max_requests_per_client,
        trusted_proxies=args.trusted_proxies,
        on_stop=sampler.stop,
    )
