"""Run a real single-node VictoriaMetrics on loopback, scraping the same targets as Prometheus.

``running_victoriametrics(workdir, targets_file=...)`` starts Debian's ``victoria-metrics`` with a
scrape configuration holding only the shipped ``gpu`` job of ``prometheus/prometheus.yml`` (VM
does not evaluate rules, and refuses fields it does not know), reading the given file_sd file,
with a short scrape interval and file check, and with queries seeing samples at once (VM hides
the last 30 s by default). It yields a server with the same query helpers as Prometheus'::

    with running_victoriametrics(tmp_path, targets_file=targets) as vm:
        vm.wait_for('up{job="gpu"} == 1', lambda result: len(result) == 2)

A VictoriaMetrics that cannot start raises :class:`~simulator.proc.StartError`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from simulator.proc import ManagedProcess, StartError, free_port, wait_started
from simulator.prometheus import CONFIG, PrometheusServer, load_yaml

BINARY = "victoria-metrics"


def find_binary() -> str:
    """The server's path; a clear failure (not a skip) when it is not installed."""
    path = shutil.which(BINARY)
    if path is None:
        raise StartError(
            f"{BINARY} not found on PATH: install the Debian package 'victoria-metrics'"
        )
    return path


def write_config(directory: Path, *, targets_file: Path, interval: str = "1s") -> Path:
    """The shipped ``gpu`` scrape job alone, reading ``targets_file`` every ``interval``."""
    jobs = [job for job in load_yaml(CONFIG)["scrape_configs"] if job["job_name"] == "gpu"]
    assert len(jobs) == 1, "prometheus.yml must have exactly one scrape job named gpu"
    job = dict(jobs[0], scrape_interval=interval, scrape_timeout=interval)
    # VM checks file_sd files on its own flag (-promscrape.fileSDCheckInterval), not this field.
    job["file_sd_configs"] = [{"files": [str(targets_file)]}]
    path = directory / "scrape.yml"
    path.write_text(yaml.safe_dump({"scrape_configs": [job]}, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def running_victoriametrics(
    workdir: Path, *, targets_file: Path, interval: str = "1s", port: int | None = None
) -> Iterator[PrometheusServer]:
    """Start VictoriaMetrics on 127.0.0.1 scraping ``targets_file``; stop it on exit.

    ``port`` None picks a free one; the configuration and database live in ``workdir``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir, targets_file=targets_file, interval=interval)
    port = port or free_port()
    command = [
        find_binary(),
        f"-promscrape.config={config}",
        "-promscrape.config.strictParse=true",
        f"-promscrape.configCheckInterval={interval}",
        f"-promscrape.fileSDCheckInterval={interval}",
        f"-storageDataPath={workdir / 'data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-loggerLevel=INFO",
    ]
    process = ManagedProcess(command, log_path=workdir / "victoria-metrics.log")
    server = PrometheusServer(f"http://127.0.0.1:{port}", config, process)
    try:
        wait_started(process, f"{server.url}/health", what="VictoriaMetrics", log_tail=4000)
        yield server
    finally:
        process.stop()
