"""Helpers of the fault suite (``-m faults``): scrape load, timed restarts, measured recoveries.

The suite kills and restarts real processes (:meth:`simulator.proc.ManagedProcess.kill` and
``restart``: the same command, port, data directory and environment) and measures how long each
part takes to be whole again. Every measurement is also written to
``build/artifacts/faults.json`` (``fault_timings``), where docs/faults.md takes its numbers from.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from simulator.fakenvml import scenario as fake
from simulator.proc import ManagedProcess
from tests.support.status_service import node

# The outage of the query engine the suite runs, in seconds: shorter than a minute, to keep CI
# short (the code path is the same: every round fails until the engine answers).
# FAULTS_ENGINE_OUTAGE=60 runs a full minute.
ENGINE_OUTAGE_ENV = "FAULTS_ENGINE_OUTAGE"
DEFAULT_ENGINE_OUTAGE = 6.0

GIB = 1024**3
HOT_CELSIUS = 93
XID = 13  # graphics engine exception: an application fault, no alert


def scenario(
    worker: int,
    *,
    busy: bool = False,
    hot: bool = False,
    energy: int = 5_000_000_000,
    xids: int = 0,
) -> fake.FakeScenario:
    """A node of two GPUs: GPU 0 held by ``worker`` (2 GiB), computing when ``busy``, else idle
    but held, with ``xids`` XID 13 events; GPU 1 free, at 93 °C when ``hot``. ``energy`` is
    each GPU's counter in millijoules (a driver reload starts it over)."""
    held = fake.make_gpu(
        0,
        processes=[fake.FakeProcess(worker, 2 * GIB)],
        memory_used=2 * GIB + 300 * 1024**2,
        utilization_gpu=80 if busy else 0,
        energy=energy,
        xids=[fake.FakeXid(XID, id=n) for n in range(xids)],
    )
    free = fake.make_gpu(
        1, memory_used=0, utilization_gpu=0, temperature=HOT_CELSIUS if hot else 40, energy=energy
    )
    return fake.FakeScenario(gpus=[held, free])


def gpus_of(document: dict[str, Any], text: str) -> list[tuple[int, str, int]]:
    """What identifies a node's GPUs on the page: index, name, total memory."""
    return [(g["index"], g["name"], g["tot_mem"]) for g in node(document, text)["gpus"]]


class Timings:
    """Measured seconds per case and step, kept for build/artifacts/faults.json."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, float]] = {}

    def record(self, case: str, step: str, seconds: float) -> float:
        self.values.setdefault(case, {})[step] = round(seconds, 2)
        return seconds


@pytest.fixture(scope="session")
def fault_timings(artifacts: Path) -> Iterator[Timings]:
    """Measurements of this run, merged into ``faults.json`` at the end of the session."""
    timings = Timings()
    yield timings
    path = artifacts / "faults.json"
    previous: dict[str, Any] = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}
    previous.update(timings.values)
    path.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")


def seconds_until(
    predicate: Callable[[], object], *, timeout: float, interval: float = 0.05, what: str
) -> float:
    """Seconds until ``predicate()`` is truthy (exceptions count as not yet); AssertionError
    after ``timeout``."""
    started = time.monotonic()
    last: object = None
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except (requests.RequestException, ValueError, KeyError) as error:
            last = error
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s (last error: {last})")
        time.sleep(interval)


def answers(url: str, *, status: int = 200) -> Callable[[], bool]:
    def check() -> bool:
        return requests.get(url, timeout=1).status_code == status

    return check


def restart_until_ready(process: ManagedProcess, ready_url: str, *, timeout: float = 20) -> float:
    """Restart ``process`` (after :meth:`ManagedProcess.kill`); seconds from the start until
    ``ready_url`` answers 200."""
    process.restart()
    try:
        return seconds_until(answers(ready_url), timeout=timeout, interval=0.02, what=ready_url)
    except AssertionError as error:
        raise AssertionError(f"{error}\nlog:\n{process.log()[-3000:]}") from None


class ScrapeLoad:
    """``clients`` threads scraping ``url`` back to back until stopped, counting answers.

    Each thread keeps one session (keep-alive connections, as Prometheus holds them); a
    connection error is counted and the thread goes on, as a scraper retries at its next
    interval.
    """

    def __init__(self, url: str, *, clients: int = 4, timeout: float = 2.0) -> None:
        self.url = url
        self.ok = 0
        self.errors = 0
        self._timeout = timeout
        self._clients = clients
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(clients, thread_name_prefix="scraper")
        self._running: list[Future[None]] = []

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                good = session.get(self.url, timeout=self._timeout).status_code == 200
            except requests.RequestException:
                good = False
                time.sleep(0.05)  # no busy loop against a closed port
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.errors += 1

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, self.errors

    def __enter__(self) -> ScrapeLoad:
        self._running = [self._pool.submit(self._run) for _ in range(self._clients)]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)
        for scraper in self._running:
            scraper.result()  # a bug in the load itself fails the test
