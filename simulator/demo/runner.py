"""Start every piece of the demo, wait, and stop them all: nothing is left running.

Each piece registers its clean-up on one :class:`contextlib.ExitStack` as soon as it starts, so
a failed start, Ctrl-C, SIGTERM, SIGHUP or the end of ``--duration`` stops what has started,
in reverse order, and removes the work directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from simulator.demo.alerts import alertmanager_installed, running_demo_alertmanager
from simulator.demo.common import DemoError, pick_port
from simulator.demo.drift import Simulation
from simulator.demo.jobs import JobRunner, compile_job_program, job_users
from simulator.demo.nodes import node_ports, plan_nodes, start_exporter, start_first_jobs
from simulator.demo.services import (
    prometheus_installed,
    running_prometheus,
    start_status_api,
    write_hosts,
)
from simulator.fakenvml.build import BuildError, build
from simulator.proc import StartError, wait_started

LOG_TAIL = 3000  # characters of a service's log shown when it does not start


@contextlib.contextmanager
def work_directory() -> Iterator[Path]:
    """A temporary directory the job accounts can enter (the job program lives there)."""
    directory = Path(tempfile.mkdtemp(prefix="gpu-demo-"))
    try:
        directory.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _password_file(directory: Path) -> Path:
    path = directory / "password"
    path.touch(mode=0o600)
    path.write_text(secrets.token_urlsafe(18) + "\n", encoding="utf-8")
    return path


def _status_port(requested: int) -> int:
    port = pick_port("127.0.0.1", requested)
    if requested and port != requested:
        print(f"port {requested} is busy; the status page uses {port} instead", flush=True)
    return port


def start_cluster(stack: contextlib.ExitStack, args: argparse.Namespace) -> dict[str, str]:
    """Start every piece under ``stack``; return the URLs to print."""
    directory = stack.enter_context(work_directory())
    try:
        library_dir = build().parent
    except BuildError as error:
        raise DemoError(str(error)) from None
    rng = random.Random()
    runner = JobRunner(compile_job_program(directory), job_users(), rng)
    stack.callback(runner.stop_all)
    nodes = plan_nodes(directory, node_ports())
    start_first_jobs(nodes, runner, rng)
    simulation = Simulation(nodes, runner, rng)
    simulation.step(0.0)
    password = _password_file(directory)
    for node in nodes:
        node.exporter = start_exporter(
            node, library_dir=library_dir, password_file=password, directory=directory
        )
        stack.callback(node.exporter.stop)
    for node in nodes:
        assert node.exporter is not None
        wait_started(
            node.exporter,
            f"{node.url}/-/ready",
            what=f"the exporter of {node.name}",
            log_tail=LOG_TAIL,
        )
    simulation.start()
    stack.callback(simulation.stop)
    hosts = directory / "hosts.txt"
    write_hosts(hosts, nodes)
    port = _status_port(args.port)
    status = start_status_api(hosts=hosts, port=port, password_file=password, directory=directory)
    stack.callback(status.stop)
    status_url = f"http://127.0.0.1:{port}"
    wait_started(status, f"{status_url}/-/ready", what="gpu-status-api", log_tail=LOG_TAIL)
    urls = {"status page": f"{status_url}/", "cluster JSON": f"{status_url}/api/v1/cluster"}
    urls.update({node.name: f"{node.url}/metrics   ({node.description})" for node in nodes})
    if args.no_prometheus:
        urls["Prometheus"] = "not started (--no-prometheus)"
    elif prometheus_installed():
        alertmanagers = []
        if alertmanager_installed():
            url, address = stack.enter_context(running_demo_alertmanager(directory))
            alertmanagers.append(address)
            urls["Alertmanager"] = f"{url}/   (its notifications are printed below)"
        else:
            urls["Alertmanager"] = (
                "not installed (Debian package 'prometheus-alertmanager'), skipped"
            )
        prometheus_url = stack.enter_context(
            running_prometheus(directory, hosts=hosts, alertmanagers=alertmanagers)
        )
        urls["Prometheus"] = f"{prometheus_url}/targets   (alerts: {prometheus_url}/alerts)"
    else:
        urls["Prometheus"] = "not installed (Debian package 'prometheus'), skipped"
    users = ", ".join(user.name for user in job_users())
    urls["job users"] = users if os.geteuid() == 0 else f"{users} (run as root for several)"
    urls["files, logs"] = f"{directory}   (removed when the demo stops)"
    return urls


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait(duration: float | None) -> None:
    """Until Ctrl-C, SIGTERM or the end of ``duration`` seconds."""
    deadline = None if duration is None else time.monotonic() + duration
    while True:
        left = 1.0 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(1.0, left))


def run(args: argparse.Namespace) -> int:
    """Run the demo until stopped; 0, or 1 when a piece cannot start (said on stderr)."""
    # Set explicitly: a shell starting us in the background would leave SIGINT ignored, and a
    # closed terminal (SIGHUP) must clean up as well.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    stack = contextlib.ExitStack()
    try:
        urls = start_cluster(stack, args)
        width = max(len(name) for name in urls)
        print("gpu-cluster-monitor demo: three simulated GPU nodes", flush=True)
        for name, url in urls.items():
            print(f"  {name:<{width}}  {url}", flush=True)
        print("Ctrl-C stops the demo.", flush=True)
        _wait(args.duration)
        return 0
    except (DemoError, StartError) as error:
        print(f"demo: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        print("stopping the demo ...", flush=True)
        stack.close()
        print("stopped; nothing left running.", flush=True)
