"""Soak benchmark: gpu-exporter running for minutes while processes churn and faults come and go.

The full run of the soak test: 64 processes on 8 GPUs, eight of them replaced by fresh processes
every second, with a ten-second cycle of faults (a GPU lost, fields and the process list failing,
the device count failing, pids gone before the lookup); a scraper reads ``/metrics`` and posts
``/get-status`` five times a second throughout. Every ``--report-every`` seconds the scenario is
made fault-free for a moment and the script prints the exporter's RSS and series count; at the
end, their drift since the first report (after warm-up). Run from the repository root::

    .venv/bin/python -m benchmarks.bench_soak [--minutes 10] [--report-every 30] [--no-faults]

Exit status 1 when the series count changed, a scrape failed, or the log holds a traceback.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from servicekit.cliargs import positive
from simulator import REPO
from simulator.exporters import start_exporter
from simulator.fakenvml import scenario as fake
from simulator.fakenvml.build import build
from simulator.load import Churn, Scraper, checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=positive(float), default=10.0)
    parser.add_argument("--report-every", type=positive(float), default=30.0, help="seconds")
    parser.add_argument("--gpus", type=positive(int), default=8)
    parser.add_argument("--processes", type=positive(int), default=64)
    parser.add_argument("--churn", type=positive(int), default=8, help="processes replaced per s")
    parser.add_argument("--interval", type=positive(float), default=1.0, help="exporter sampling")
    parser.add_argument("--no-faults", action="store_true", help="churn processes only")
    args = parser.parse_args(argv)
    if args.churn > args.processes:
        parser.error("--churn cannot exceed --processes")

    library = build(REPO / "build" / "fakenvml").parent
    reports: list[tuple[float, int, int, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        exporter = start_exporter(library, Path(tmp), fake.idle(args.gpus), interval=args.interval)
        churn = Churn(
            exporter.set_scenario,
            n_gpus=args.gpus,
            n_processes=args.processes,
            per_step=args.churn,
            faults=not args.no_faults,
        )
        scraper = Scraper(exporter)
        started = time.monotonic()
        print("elapsed s  RSS MiB  series  processes started", flush=True)
        try:
            end = started + args.minutes * 60
            while time.monotonic() < end:
                churn.run_for(min(args.report_every, end - time.monotonic()))
                series, rss = checkpoint(exporter, churn)
                elapsed = time.monotonic() - started
                reports.append((elapsed, rss, series, churn.pids_started))
                print(
                    f"{elapsed:9.0f}  {rss / 2**20:7.1f}  {series:6d}  {churn.pids_started:9d}",
                    flush=True,
                )
        finally:
            scraped = scraper.stop()
            churn.stop()
            alive = exporter.process.alive()
            log = exporter.log()
            exporter.stop()

    first, last = reports[0], reports[-1]
    print(f"RSS drift after the first report: {(last[1] - first[1]) / 2**20:+.2f} MiB")
    print(f"series drift: {last[2] - first[2]:+d} (first {first[2]}, last {last[2]})")
    print(f"scrapes: {scraped.summary()}; lost-GPU fault served: {scraper.gpu_down_seen}")
    print(f"exporter alive to the end: {alive}; traceback in log: {'Traceback' in log}")
    for sample in scraped.error_samples:
        print(f"error: {sample}")
    healthy = alive and "Traceback" not in log and not scraped.errors
    return 0 if healthy and last[2] == first[2] else 1


if __name__ == "__main__":
    sys.exit(main())
