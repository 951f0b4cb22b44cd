"""Benchmark gpu-exporter against nvitop-exporter on the same fake NVML library and scenarios.

For each scenario (GPUs x processes: 1x0, 8x64, 16x512), both exporters sample every second; with
``--readings all`` (the default) every GPU also reports what a current data-centre GPU does (PCIe
link and replays, 18 NVLinks as on an H100 SXM, row remapping, aggregate ECC, a utilization sample
per process, GPM figures), so the exporter's per-sample work is the real one; ``--readings basic``
leaves those out (NVML answers NOT_SUPPORTED), as the scenarios of 0.1.0 did. ``--no-gpm`` runs
gpu-exporter with ``--no-collector.gpm``, to see what GPM costs; ``--dcgm-names`` runs it with
``--metrics.dcgm-names``, to see what dcgm-exporter's names cost beside the project's; ``--scenario
8x64`` (repeatable) runs only the scenarios named.
The script measures, per exporter: scrape latency p50/p99 over N sequential scrapes, bytes per
scrape, CPU seconds per minute while scraped once a second, and resident memory. Run from the
repository root after ``make test`` has built the environment::

    .venv/bin/python -m benchmarks.bench_exporter [--scrapes 500] [--cpu-window 30]
        [--scenario 8x64]

nvitop-exporter is optional (``pip install nvitop-exporter``); without it only gpu-exporter runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from simulator import REPO
from simulator.exporters import nvml_env
from simulator.fakenvml import scenario as fake
from simulator.fakenvml.build import build
from simulator.proc import ManagedProcess, free_port, wait_http

SCENARIOS = ((1, 0), (8, 64), (16, 512))
# What GPM reports on a GPU training a model: every figure the exporter publishes.
GPM_FIGURES = fake.FakeGpmMetrics(
    graphics_active=97, sm_active=71.5, sm_occupancy=38.25, tensor_active=44, dram_active=52.5,
    fp64_active=0, fp32_active=12.5, fp16_active=3, pcie_tx=2 * fake.GIB,
    pcie_rx=6 * fake.GIB, nvlink_tx=120 * fake.GIB, nvlink_rx=118 * fake.GIB,
)  # fmt: skip
NVLINKS = 18  # an H100 SXM's


@dataclass
class Result:
    exporter: str
    scenario: str
    p50_ms: float
    p99_ms: float
    bytes_per_scrape: int
    cpu_seconds_per_minute: float
    rss_mib: float


def _command(name: str, port: int, *, gpm: bool = True, dcgm_names: bool = False) -> list[str]:
    if name == "gpu-exporter":
        return [sys.executable, "-m", "exporter", "--port", str(port),
                "--listen-address", "127.0.0.1", "--interval", "1",
                *(() if gpm else ("--no-collector.gpm",)),
                *(("--metrics.dcgm-names",) if dcgm_names else ())]  # fmt: skip
    return [_nvitop_exporter() or "nvitop-exporter", "--bind-address", "127.0.0.1",
            "--port", str(port), "--interval", "1"]  # fmt: skip


def _nvitop_exporter() -> str | None:
    """nvitop-exporter on PATH or beside this interpreter (a virtual environment's bin)."""
    beside = Path(sys.executable).parent / "nvitop-exporter"
    return shutil.which("nvitop-exporter") or (str(beside) if beside.exists() else None)


def with_every_reading(scenario: fake.FakeScenario) -> fake.FakeScenario:
    """``scenario`` with the health readings and per-process utilization of a current GPU."""
    gpus = [
        dataclasses.replace(
            gpu,
            ecc_aggregate_corrected=3,
            ecc_aggregate_uncorrected=0,
            pcie_replay=1,
            pcie_link=fake.FakePcieLink(max_gen=5, max_width=16, gen=5, width=16),
            nvlinks=[fake.FakeNvLink() for _ in range(NVLINKS)],
            remapped_rows=fake.FakeRemappedRows(),
            process_utilization=[
                fake.FakeProcessUtilization(process.pid, 50, 20) for process in gpu.processes
            ],
            gpm="supported",
            gpm_metrics=GPM_FIGURES,
        )
        for gpu in scenario.gpus
    ]
    return dataclasses.replace(scenario, gpus=gpus)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure(
    name: str, label: str, env: dict[str, str], workdir: Path, args: argparse.Namespace
) -> Result:
    port = free_port()
    command = _command(name, port, gpm=not args.no_gpm, dcgm_names=args.dcgm_names)
    process = ManagedProcess(command, log_path=workdir / f"{name}.log", env=env)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(url, timeout=60)
        time.sleep(2)  # let both exporters finish their first samples
        session = requests.Session()
        # Plain text, like a curl or a Prometheus without compression: measures rendering.
        headers = {"Accept-Encoding": "identity"}
        latencies, sizes = [], []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            body = session.get(url, headers=headers, timeout=10).content
            latencies.append(time.perf_counter() - started)
            sizes.append(len(body))
        watched = psutil.Process(process.pid)
        cpu_before = _cpu_seconds(watched)
        window_start = time.monotonic()
        while time.monotonic() - window_start < args.cpu_window:
            session.get(url, headers=headers, timeout=10)
            time.sleep(1)
        cpu = _cpu_seconds(watched) - cpu_before
        elapsed = time.monotonic() - window_start
        rss = watched.memory_info().rss / 2**20
    finally:
        process.stop()
    quantiles = statistics.quantiles(latencies, n=100)
    return Result(
        exporter=name,
        scenario=label,
        p50_ms=statistics.median(latencies) * 1e3,
        p99_ms=quantiles[98] * 1e3,
        bytes_per_scrape=int(statistics.median(sizes)),
        cpu_seconds_per_minute=cpu * 60 / elapsed,
        rss_mib=rss,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--cpu-window", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--only", choices=["gpu-exporter", "nvitop-exporter"])
    parser.add_argument(
        "--readings", choices=["all", "basic"], default="all",
        help="all: health readings and per-process utilization on every GPU (default)",
    )  # fmt: skip
    parser.add_argument(
        "--no-gpm", action="store_true", help="run gpu-exporter with --no-collector.gpm"
    )
    parser.add_argument(
        "--dcgm-names", action="store_true", help="run gpu-exporter with --metrics.dcgm-names"
    )
    parser.add_argument(
        "--scenario", action="append", choices=[f"{g}x{p}" for g, p in SCENARIOS],
        help="only this scenario (repeatable; default: all)",
    )  # fmt: skip
    args = parser.parse_args()
    library = build(REPO / "build" / "fakenvml").parent
    exporters = ["gpu-exporter", "nvitop-exporter"]
    if args.only:
        exporters = [args.only]
    elif _nvitop_exporter() is None:
        print("nvitop-exporter not installed: measuring gpu-exporter only", file=sys.stderr)
        exporters = ["gpu-exporter"]
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for gpus, processes in SCENARIOS:
            if args.scenario and f"{gpus}x{processes}" not in args.scenario:
                continue
            workers = [subprocess.Popen(["sleep", "3600"]) for _ in range(processes)]
            try:
                scenario_path = workdir / f"{gpus}x{processes}.scn"
                if processes:
                    scenario = fake.busy(gpus, [w.pid for w in workers])
                else:
                    scenario = fake.idle(gpus)
                if args.readings == "all":
                    scenario = with_every_reading(scenario)
                fake.write(scenario_path, scenario)
                env = nvml_env(library, scenario_path)
                for name in exporters:
                    result = measure(name, f"{gpus}x{processes}", env, workdir, args)
                    results.append(result)
                    print(f"  done {name} {result.scenario}", file=sys.stderr, flush=True)
            finally:
                for worker in workers:
                    worker.kill()
                    worker.wait()
    print("| scenario | exporter | p50 ms | p99 ms | bytes/scrape | CPU s/min | RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        cells = [
            r.scenario,
            r.exporter,
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.bytes_per_scrape),
            f"{r.cpu_seconds_per_minute:.2f}",
            f"{r.rss_mib:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
