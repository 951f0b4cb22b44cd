"""Benchmark gpu-status-api: one full poll of 10, 100 and 1000 nodes, and the JSON endpoint.

Simulated nodes (``simulator.nodes``, in a process of their own) answer on one port on
many ``127.1.x.y`` loopback addresses with legacy JSON of 8 GPUs; 1% of them (at least one) accept
the connection and never answer. For each size the script measures, with the service's default
settings (1.5 s timeout, 256 polls at once):

* the first round (new connections) and the median of the next rounds (kept-alive connections),
  polling plus checking every answer, and the render of both JSON views;
* at 1000 nodes, a real ``gpu-status-api`` process: its own round duration from ``/metrics``,
  its CPU time per round and memory, and the latency of ``GET /api/v1/cluster`` (plain and gzip)
  over sequential requests spread across several rounds.

Targets: a full poll of 1000 nodes under 2 s with dead nodes present; the JSON under 100 ms.
Run from the repository root::

    .venv/bin/python -m benchmarks.bench_status_api [--sizes 10,100,1000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from simulator.nodes import free_port_on, loopback_addresses
from simulator.proc import ManagedProcess, free_port, wait_http
from status_api.cluster import Cluster
from status_api.hosts import parse_hosts
from status_api.poller import NodeClient, PollSettings
from status_api.tuning import tune_process


@dataclass
class PollFigures:
    nodes: int
    dead: int
    first_round_s: float
    steady_round_s: float
    render_ms: float
    answered: int


@contextmanager
def fake_nodes(count: int, dead: int) -> Iterator[list[str]]:
    """Start the simulated nodes; yields their hosts.txt lines."""
    addresses = loopback_addresses(count)
    port = free_port_on(addresses)
    command = [sys.executable, "-m", "simulator.nodes", "--count", str(count),
               "--dead", str(dead), "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"fake nodes did not start: {line!r}")
        yield [f"{address}:{port}" for address in addresses]
    finally:
        process.kill()
        process.wait()


def measure_polls(lines: list[str], dead: int, rounds: int, concurrency: int) -> PollFigures:
    hosts = parse_hosts("\n".join(lines))
    settings = PollSettings(password=lambda: "8888", concurrency=concurrency)
    cluster = Cluster()

    async def run() -> tuple[list[float], list[float], int]:
        client = NodeClient(settings)
        durations: list[float] = []
        renders: list[float] = []
        answered = 0
        failed: set = set()
        try:
            for _ in range(rounds):
                ordered = [h for h in hosts if h.key in failed] + [
                    h for h in hosts if h.key not in failed
                ]
                started = time.perf_counter()
                results = await client.poll_all(ordered)
                durations.append(time.perf_counter() - started)
                rendered = time.perf_counter()
                cluster.update(hosts, results)
                renders.append(time.perf_counter() - rendered)
                answered = sum(result.ok for result in results)
                failed = {result.host.key for result in results if not result.ok}
        finally:
            await client.close()
        return durations, renders, answered

    durations, renders, answered = asyncio.run(run())
    return PollFigures(
        nodes=len(hosts),
        dead=dead,
        first_round_s=durations[0],
        steady_round_s=statistics.median(durations[1:]) if len(durations) > 1 else durations[0],
        render_ms=statistics.median(renders) * 1000,
        answered=answered,
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _metric(session: requests.Session, base: str, name: str) -> float:
    for line in session.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def _rounds(session: requests.Session, base: str) -> float:
    return _metric(session, base, "gpu_status_api_rounds_total")


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure_service(lines: list[str], requests_count: int) -> dict[str, float]:
    """A real gpu-status-api process on these nodes: its rounds and its JSON latency."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-status-api-"))
    (workdir / "hosts.txt").write_text("\n".join(lines) + "\n")
    port = free_port()
    command = [sys.executable, "-m", "status_api", "-c", str(workdir / "hosts.txt"),
               "--port", str(port), "--listen-address", "127.0.0.1", "--disable_log"]  # fmt: skip
    process = ManagedProcess(command, log_path=workdir / "status-api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/-/ready", timeout=60)
        time.sleep(4)  # let a few rounds run on kept-alive connections
        session = requests.Session()
        figures: dict[str, float] = {}
        # CPU per round while nobody reads the page, so serving does not count.
        cpu = psutil.Process(process.pid)
        cpu_before, rounds_before = _cpu_seconds(cpu), _rounds(session, base)
        time.sleep(9)
        rounds = _rounds(session, base) - rounds_before
        figures["cpu_per_round_s"] = (_cpu_seconds(cpu) - cpu_before) / max(1, rounds)
        for label, encoding in (("plain", "identity"), ("gzip", "gzip")):
            latencies = []
            size = 0
            for _ in range(requests_count):
                started = time.perf_counter()
                response = session.get(
                    f"{base}/api/v1/cluster", headers={"Accept-Encoding": encoding}, stream=True
                )
                body = response.raw.read()
                latencies.append(time.perf_counter() - started)
                size = len(body)
                response.raise_for_status()
                time.sleep(0.02)  # spread the requests over several polling rounds
            figures[f"{label}_p50_ms"] = statistics.median(latencies) * 1000
            figures[f"{label}_p99_ms"] = _percentile(latencies, 0.99) * 1000
            figures[f"{label}_bytes"] = size
        figures["service_round_s"] = _metric(session, base, "gpu_status_api_round_duration_seconds")
        figures["rss_mib"] = cpu.memory_info().rss / 2**20
        return figures
    finally:
        process.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="node counts (default 10,100,1000)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per size (default 4)")
    parser.add_argument(
        "--requests", type=int, default=200, help="JSON requests per encoding (default 200)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=PollSettings.concurrency,
        help=f"polls at once (default: the service's, {PollSettings.concurrency})",
    )  # fmt: skip
    parser.add_argument("--no-service", action="store_true", help="skip the process measurements")
    args = parser.parse_args(argv)
    tune_process()  # the same interpreter settings as the service
    sizes = [int(size) for size in args.sizes.split(",")]

    print(f"{'nodes':>6} {'dead':>5} {'answered':>9} {'first round':>12} "
          f"{'steady round':>13} {'render':>9} {'steady + render':>16}")  # fmt: skip
    service: dict[str, float] = {}
    for size in sizes:
        dead = max(1, math.ceil(size / 100))
        with fake_nodes(size, dead) as lines:
            figures = measure_polls(lines, dead, args.rounds, args.concurrency)
            print(f"{figures.nodes:>6} {figures.dead:>5} {figures.answered:>9} "
                  f"{figures.first_round_s:>10.2f} s {figures.steady_round_s:>11.2f} s "
                  f"{figures.render_ms:>6.0f} ms "
                  f"{figures.steady_round_s + figures.render_ms / 1000:>14.2f} s",
                  flush=True)  # fmt: skip
            if size == max(sizes) and not args.no_service:
                service = measure_service(lines, args.requests)
    if not service:
        return 0
    print()
    print(f"gpu-status-api process at {max(sizes)} nodes:")
    print(f"  polling round (from its /metrics): {service['service_round_s']:.2f} s")
    print(f"  CPU per round, nobody reading: {service['cpu_per_round_s']:.2f} s")
    print(f"  resident memory: {service['rss_mib']:.0f} MiB")
    for label in ("plain", "gzip"):
        p50, p99 = service[label + "_p50_ms"], service[label + "_p99_ms"]
        size = int(service[label + "_bytes"])
        print(f"  GET /api/v1/cluster {label:>5}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, {size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
