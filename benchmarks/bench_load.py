"""Load benchmark: concurrent clients scraping one gpu-exporter on the fake NVML library.

The full run of the load test: 50 clients scrape ``/metrics`` of the 8-GPU, 64-process scenario
for 60 s, each in a loop, over loopback. Prints p50/p99/max latency, errors, requests per second,
and the exporter's CPU time and RSS. Run from the repository root after ``make test`` has built
the environment::

    .venv/bin/python -m benchmarks.bench_load [--clients 50] [--seconds 60] [--gpus 8] \\
        [--processes 64] [--gzip] [--tls] [--basic-auth] [--one-address]

``--tls --basic-auth --one-address`` is the honest overload: every client behind one address (a
NAT, a proxy, one Prometheus host with many jobs), against an exporter with TLS and a password.
The clients over the exporter's per-client share must get 503 with ``Retry-After`` (counted, and
waited out as asked), never a dropped connection or a TLS error (counted as errors).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import psutil

from servicekit.cliargs import positive
from simulator import REPO
from simulator.exporters import Workers, start_exporter
from simulator.fakenvml import scenario as fake
from simulator.fakenvml.build import build
from simulator.load import scrape_load
from simulator.webconfig import write_web_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=positive(int), default=50)
    parser.add_argument("--seconds", type=positive(float), default=60.0)
    parser.add_argument("--gpus", type=positive(int), default=8)
    parser.add_argument("--processes", type=int, default=64)
    parser.add_argument("--client-processes", type=positive(int), default=5)
    parser.add_argument("--interval", type=positive(float), default=2.0, help="exporter sampling")
    parser.add_argument("--gzip", action="store_true", help="ask for gzip, as Prometheus does")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (a throwaway CA)")
    parser.add_argument("--basic-auth", action="store_true", help="require a basic-auth user")
    parser.add_argument(
        "--one-address", action="store_true", help="every client from 127.0.0.1, not its own"
    )
    parser.add_argument("exporter_args", nargs="*", help="extra gpu-exporter options, after --")
    args = parser.parse_args(argv)

    library = build(REPO / "build" / "fakenvml").parent
    headers = {"Accept-Encoding": "gzip" if args.gzip else "identity"}
    with tempfile.TemporaryDirectory() as tmp, Workers() as workers:
        pids = workers.start(args.processes)
        scenario = fake.busy(args.gpus, pids) if pids else fake.idle(args.gpus)
        auth = ("prometheus", "bench-password") if args.basic_auth else None
        extra: list[str] = []
        verify: str | bool = True
        if args.tls or auth:
            config, ca_file = write_web_config(Path(tmp) / "web", basic_auth=auth, tls=args.tls)
            extra += ["--web.config.file", str(config)]
            verify = str(ca_file) if args.tls else True
        exporter = start_exporter(
            library,
            Path(tmp),
            scenario,
            *extra,
            *args.exporter_args,
            interval=args.interval,
            scheme="https" if args.tls else "http",
        )
        try:
            watched = psutil.Process(exporter.process.pid)
            cpu_before = sum(watched.cpu_times()[:2])
            print(
                f"{args.clients} clients, {args.seconds:.0f} s, {args.gpus}x{args.processes}, "
                f"{'gzip' if args.gzip else 'plain text'}"
                f"{', TLS' if args.tls else ''}{', basic auth' if auth else ''}"
                f"{', one address' if args.one_address else ''}",
                file=sys.stderr,
                flush=True,
            )
            result = scrape_load(
                f"{exporter.url}/metrics",
                clients=args.clients,
                seconds=args.seconds,
                client_processes=args.client_processes,
                headers=headers,
                verify=verify,
                auth=auth,
                source="127.0.0.1" if args.one_address else None,
            )
            cpu = sum(watched.cpu_times()[:2]) - cpu_before
            rss = watched.memory_info().rss / 2**20
            alive = exporter.process.alive()
            traceback = "Traceback" in exporter.log()
        finally:
            exporter.stop()

    print(f"scenario            {args.gpus}x{args.processes}")
    print(f"clients             {args.clients}")
    print(f"duration s          {result.seconds:.1f}")
    print(f"requests            {result.requests}")
    print(f"errors              {result.errors}")
    print(f"503 Retry-After     {result.busy}")
    print(f"requests/s          {result.requests / result.seconds:.1f}")
    if result.latencies:
        print(f"latency p50 ms      {result.quantile(0.50) * 1e3:.2f}")
        print(f"latency p99 ms      {result.quantile(0.99) * 1e3:.2f}")
        print(f"latency max ms      {max(result.latencies) * 1e3:.2f}")
        print(f"KiB per answer      {result.bytes_received / len(result.latencies) / 1024:.1f}")
    print(f"exporter CPU s      {cpu:.1f} ({cpu / result.seconds:.2f} cores)")
    print(f"exporter RSS MiB    {rss:.1f}")
    for sample in result.error_samples:
        print(f"error: {sample}")
    if not alive or traceback:
        print("exporter died or logged a traceback", file=sys.stderr)
        return 1
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
