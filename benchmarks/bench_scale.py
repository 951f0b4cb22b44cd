"""Benchmark at cluster scale: 2,000 simulated nodes x 8 GPUs scraped by Prometheus and
VictoriaMetrics, and gpu-status-api serving them from the engine and by polling the nodes.

One process (``python -m simulator.nodes --exporter-metrics``) answers for every node on its own
``127.1.x.y`` loopback address: ``POST /get-status`` with legacy JSON and ``/metrics`` with the
exporter's whole exposition, rendered once per node by the exporter's own collector (8 GPUs, 8
processes with a Slurm job, about 350 series and 30 kB per node), with the time of the last
sampling pass set at each scrape. ``gpu-status-api targets`` writes the file_sd file from the
hosts.txt. For each engine (the shipped configuration, its scrape interval: 15 s):

* once every target is up and a few scrapes have passed: the scrape duration (mean and max over
  targets), samples per scrape, and the engine's CPU and resident memory while it only scrapes;
* ``gpu-status-api --prometheus-url``: the duration of its rounds (``gpu_status_api_round_
  duration_seconds`` on its /metrics: the queries, decoding and building the cluster), its CPU
  and memory, the latency of ``GET /api/v1/cluster`` (p50, p99), and, from this script, each
  query's answer size and time;

then the service polling the same nodes directly (``-c hosts.txt``), for comparison. Targets: a
refresh under 2 s, the JSON's p99 under 100 ms. Run from the repository root::

    .venv/bin/python -m benchmarks.bench_scale [--nodes 2000] [--gpus 8]
        [--engine prometheus|victoriametrics|both] [--duration 60] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from simulator.nodes import free_port_on, loopback_addresses
from simulator.proc import ManagedProcess, free_port, wait_http
from simulator.prometheus import PrometheusServer, running_prometheus
from simulator.victoriametrics import running_victoriametrics
from status_api.engine import EngineClient, EngineError, EngineSettings
from status_api.promsource import (
    METRICS,
    SLOW,
    SLOW_SECONDS,
    Cadence,
    build_results,
    merged,
    queries,
)

SCRAPE_INTERVAL = "15s"  # the shipped prometheus.yml's; a realistic one for 2,000 nodes
STALE_AFTER = 45.0  # three scrape intervals: a node is as old as its last scrape
OFFLINE_AFTER = 90.0


@dataclass
class Usage:
    """CPU (cores) and resident memory of one process over a window."""

    cpu_cores: float
    rss_mib: float


@dataclass
class ServiceFigures:
    mode: str
    rounds: list[float] = field(default_factory=list)
    cpu_per_round_s: float = math.nan
    rss_mib: float = math.nan
    engine: Usage | None = None  # the engine's, while the service asks it every round
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    body_bytes: int = 0
    online: int = 0
    error: str = ""  # the cluster's error at the end (a round that failed, e.g. timed out)


@dataclass
class EngineFigures:
    engine: str
    targets_up: int = 0
    samples: int = 0
    scrape_mean_s: float = math.nan
    scrape_max_s: float = math.nan
    usage: Usage | None = None
    queries: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    decode_build_s: float = math.nan
    round_s: float = math.nan  # one whole round (queries at once, decoding, building) here
    service: ServiceFigures | None = None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure_usage(pid: int, seconds: float) -> Usage:
    process = psutil.Process(pid)
    before, started = _cpu_seconds(process), time.monotonic()
    time.sleep(seconds)
    cores = (_cpu_seconds(process) - before) / (time.monotonic() - started)
    return Usage(cpu_cores=cores, rss_mib=process.memory_info().rss / 2**20)


@contextmanager
def fake_nodes(count: int, gpus: int) -> Iterator[tuple[list[str], int]]:
    """The simulated nodes with the exporter's /metrics; yields hosts.txt lines and the pid."""
    addresses = loopback_addresses(count)
    port = free_port_on(addresses)
    command = [sys.executable, "-m", "simulator.nodes", "--count", str(count),
               "--port", str(port), "--gpus", str(gpus), "--exporter-metrics"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"simulated nodes did not start: {line!r}")
        yield [f"{address}:{port}" for address in addresses], process.pid
    finally:
        process.kill()
        process.wait()


def write_targets(workdir: Path, lines: list[str]) -> tuple[Path, Path]:
    """hosts.txt, and the file_sd file written from it by ``gpu-status-api targets``."""
    hosts = workdir / "hosts.txt"
    hosts.write_text("\n".join(lines) + "\n")
    targets = workdir / "targets" / "gpu-nodes.json"
    subprocess.run(
        [sys.executable, "-m", "status_api", "targets", "-c", str(hosts), "-o", str(targets)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    return hosts, targets


def _scalar(engine: PrometheusServer, expr: str) -> float:
    result = engine.query(expr)
    return float(result[0]["value"][1]) if result else math.nan


def wait_all_up(engine: PrometheusServer, count: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    up = 0.0
    while time.monotonic() < deadline:
        try:
            up = _scalar(engine, 'count(up{job="gpu"} == 1)')
        except requests.RequestException:  # busy with its first scrapes of every target
            up = math.nan
        if up == count:
            return
        time.sleep(2)
    raise TimeoutError(f"only {up} of {count} targets up after {timeout} s")


def query_breakdown(url: str, at: float) -> tuple[dict[str, tuple[int, int, float]], float]:
    """Per query of one round, one after the other: samples, answer bytes and seconds; then
    decoding and building the cluster from those answers in this process (seconds)."""
    from status_api import engine

    figures: dict[str, tuple[int, int, float]] = {}
    bodies: dict[str, bytes] = {}
    session = requests.Session()
    for name, expr in queries("gpu").items():
        started = time.perf_counter()
        response = session.post(
            f"{url}/api/v1/query", data={"query": expr, "time": f"{at:.3f}"}, timeout=60
        )
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        bodies[name] = response.content
        figures[name] = (len(response.json()["data"]["result"]), len(response.content), elapsed)
    started = time.perf_counter()
    answers = {name: engine._vector(200, body, name) for name, body in bodies.items()}
    build_results(merged(answers), stale_after=STALE_AFTER)
    return figures, time.perf_counter() - started


def one_round(url: str) -> float:
    """Seconds of an ordinary round of the service's own client, in this process: the one after
    a first, which asked every family."""

    from status_api.promsource import _round

    async def run() -> float:
        cadence = Cadence()
        async with EngineClient(EngineSettings(url, timeout=60)) as client:
            await _round(client, job="gpu", stale_after=STALE_AFTER, cadence=cadence)
            started = time.perf_counter()
            await _round(client, job="gpu", stale_after=STALE_AFTER, cadence=cadence)
            return time.perf_counter() - started

    try:
        return asyncio.run(run())
    except EngineError as error:
        # An engine too busy to answer (Prometheus says 503 to a query that timed out) is a
        # figure of the run, not the end of it: the service's own rounds are measured next.
        print(f"  round of the service's client failed: {error}", flush=True)
        return math.nan


def _metric(session: requests.Session, base: str, name: str) -> float:
    for line in session.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return math.nan


def measure_service(
    mode: str,
    arguments: list[str],
    workdir: Path,
    *,
    duration: float,
    requests_count: int,
    engine_pid: int | None = None,
) -> ServiceFigures:
    """A real gpu-status-api process: its rounds while nobody reads (and the engine's CPU
    meanwhile), then its JSON latency."""
    port = free_port()
    command = [sys.executable, "-m", "status_api", "--port", str(port),
               "--listen-address", "127.0.0.1", "--disable_log",
               "--stale-after", str(STALE_AFTER), "--offline-after", str(OFFLINE_AFTER),
               *arguments]  # fmt: skip
    process = ManagedProcess(command, log_path=workdir / f"status-api-{mode}.log")
    base = f"http://127.0.0.1:{port}"
    figures = ServiceFigures(mode)
    try:
        wait_http(f"{base}/-/ready", timeout=120)
        session = requests.Session()
        cpu = psutil.Process(process.pid)
        time.sleep(4)  # a round or two on kept-alive connections
        rounds = _metric(session, base, "gpu_status_api_rounds_total")
        cpu_before, rounds_before = _cpu_seconds(cpu), rounds
        engine = psutil.Process(engine_pid) if engine_pid else None
        engine_before, started = _cpu_seconds(engine) if engine else 0.0, time.monotonic()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            # About once a round: rendering this /metrics for 2,000 nodes takes the service's
            # CPU too, and a scraper reading it twice a second would slow the rounds measured.
            time.sleep(3)
            now = _metric(session, base, "gpu_status_api_rounds_total")
            if now != rounds:
                rounds = now
                figures.rounds.append(
                    _metric(session, base, "gpu_status_api_round_duration_seconds")
                )
        figures.cpu_per_round_s = (_cpu_seconds(cpu) - cpu_before) / max(1, rounds - rounds_before)
        if engine:
            figures.engine = Usage(
                cpu_cores=(_cpu_seconds(engine) - engine_before) / (time.monotonic() - started),
                rss_mib=engine.memory_info().rss / 2**20,
            )
        latencies = []
        for _ in range(requests_count):
            started = time.perf_counter()
            response = session.get(
                f"{base}/api/v1/cluster", headers={"Accept-Encoding": "identity"}, stream=True
            )
            body = response.raw.read()
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            figures.body_bytes = len(body)
            time.sleep(0.02)  # spread over several rounds
        document = json.loads(body)
        figures.online = sum(
            1 for node in document.get("nodes", []) if node.get("state") == "online"
        )
        figures.p50_ms = statistics.median(latencies) * 1000
        figures.p99_ms = _percentile(latencies, 0.99) * 1000
        figures.rss_mib = cpu.memory_info().rss / 2**20
        return figures
    finally:
        process.stop()


def _engine(name: str, workdir: Path, targets: Path) -> AbstractContextManager[PrometheusServer]:
    if name == "prometheus":
        return running_prometheus(
            workdir, targets_file=targets, interval=SCRAPE_INTERVAL, alert_for=None
        )
    return running_victoriametrics(workdir, targets_file=targets, interval=SCRAPE_INTERVAL)


def measure_engine(
    name: str, workdir: Path, targets: Path, nodes: int, *, duration: float, requests_count: int
) -> EngineFigures:
    figures = EngineFigures(name)
    with _engine(name, workdir / name, targets) as engine:
        wait_all_up(engine, nodes, timeout=180)
        interval = float(SCRAPE_INTERVAL.rstrip("s"))
        time.sleep(2 * interval)  # a few scrapes of every target: series exist, caches warm
        figures.targets_up = int(_scalar(engine, 'count(up{job="gpu"} == 1)'))
        figures.samples = int(_scalar(engine, 'sum(scrape_samples_scraped{job="gpu"})'))
        figures.scrape_mean_s = _scalar(engine, 'avg(scrape_duration_seconds{job="gpu"})')
        figures.scrape_max_s = _scalar(engine, 'max(scrape_duration_seconds{job="gpu"})')
        figures.usage = measure_usage(engine.process.pid, duration)
        figures.queries, figures.decode_build_s = query_breakdown(engine.url, time.time())
        figures.round_s = one_round(engine.url)
        figures.service = measure_service(
            "promql",
            ["--prometheus-url", engine.url],
            workdir,
            duration=duration,
            requests_count=requests_count,
            engine_pid=engine.process.pid,
        )
    shutil.rmtree(workdir / name, ignore_errors=True)
    return figures


def _round_text(rounds: list[float]) -> str:
    if not rounds:
        return "no round finished"
    return f"median {statistics.median(rounds):.2f} s, max {max(rounds):.2f} s ({len(rounds)})"


def print_engine(figures: EngineFigures, nodes: int) -> None:
    print(f"\n{figures.engine}: {figures.targets_up}/{nodes} targets up, {figures.samples:,} "
          f"samples per scrape round, scrape interval {SCRAPE_INTERVAL}")  # fmt: skip
    print(f"  scrape duration: mean {figures.scrape_mean_s * 1000:.1f} ms, "
          f"max {figures.scrape_max_s * 1000:.1f} ms")  # fmt: skip
    if figures.usage:
        print(f"  engine scraping only: {figures.usage.cpu_cores:.2f} cores, "
              f"{figures.usage.rss_mib:.0f} MiB RSS")  # fmt: skip
    if figures.service and figures.service.engine:
        print(f"  engine while the status service queries it: "
              f"{figures.service.engine.cpu_cores:.2f} cores, "
              f"{figures.service.engine.rss_mib:.0f} MiB RSS")  # fmt: skip
    for name, (samples, size, seconds) in figures.queries.items():
        every = f" (every {SLOW_SECONDS:g} s)" if name in SLOW else ""
        every = " (every --power-interval)" if name in METRICS else every
        print(f"  query {name:<52} {samples:>7,} samples {size / 1e6:>5.1f} MB {seconds:>5.2f} s"
              f"{every}")  # fmt: skip
    print(f"  decode + build in Python, every query: {figures.decode_build_s:.2f} s; an ordinary "
          f"round of the service's client here: {figures.round_s:.2f} s")  # fmt: skip
    if figures.service:
        print_service(figures.service)


def print_service(figures: ServiceFigures) -> None:
    print(f"  gpu-status-api ({figures.mode}): round {_round_text(figures.rounds)}, CPU "
          f"{figures.cpu_per_round_s:.2f} s per round, {figures.rss_mib:.0f} MiB RSS")  # fmt: skip
    print(f"    GET /api/v1/cluster: p50 {figures.p50_ms:.1f} ms, p99 {figures.p99_ms:.1f} ms, "
          f"{figures.body_bytes:,} bytes, {figures.online} nodes online")  # fmt: skip
    if figures.error:
        print(f"    cluster error: {figures.error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000, help="simulated nodes (default 2000)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument(
        "--engine", choices=("prometheus", "victoriametrics", "both"), default="both"
    )
    parser.add_argument(
        "--duration", type=float, default=60.0,
        help="seconds of each measuring window (default 60)",
    )  # fmt: skip
    parser.add_argument(
        "--requests", type=int, default=300, help="GET /api/v1/cluster per mode (default 300)"
    )
    parser.add_argument("--no-polling", action="store_true", help="skip the polling mode")
    args = parser.parse_args(argv)
    engines = ["prometheus", "victoriametrics"] if args.engine == "both" else [args.engine]
    # A plain kill stops the engines and the simulated nodes too (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(f"{args.nodes} nodes x {args.gpus} GPUs; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)  # fmt: skip
    try:
        with fake_nodes(args.nodes, args.gpus) as (lines, nodes_pid):
            hosts, targets = write_targets(workdir, lines)
            for name in engines:
                figures = measure_engine(
                    name, workdir, targets, args.nodes,
                    duration=args.duration, requests_count=args.requests,
                )  # fmt: skip
                print_engine(figures, args.nodes)
                sys.stdout.flush()
            if not args.no_polling:
                service = measure_service(
                    "polling", ["-c", str(hosts)], workdir,
                    duration=args.duration, requests_count=args.requests,
                )  # fmt: skip
                print("\npolling the nodes directly:")
                print_service(service)
            nodes_cpu = psutil.Process(nodes_pid).cpu_times()
            print(
                f"\nsimulated nodes' process: {nodes_cpu.user + nodes_cpu.system:.0f} CPU s in all"
            )
    finally:
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
