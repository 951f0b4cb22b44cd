"""Load and soak drivers shared by the CI tests and the benchmark scripts.

:func:`scrape_load` runs concurrent scrapers (threads spread over a few client processes, so the
client's own GIL does not dominate the latencies; each scraper from its own loopback address) for
a fixed time and collects latencies and errors. :class:`Churn` keeps a scenario's process list
turning over with fresh real processes, and mixes in the faults a long-running exporter meets (a
GPU lost, fields erroring, a failing global call, pids gone between NVML's listing and the
lookup).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import requests

from simulator.exporters import ClientAddresses, ExporterProcess, Workers, rss_bytes
from simulator.fakenvml import scenario as fake
from simulator.metrics import label_sets, values

MAX_ERRORS_KEPT = 20
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_UNKNOWN = 999


@dataclass
class LoadResult:
    """What a load run saw; latencies in seconds."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    bytes_received: int = 0
    busy: int = 0  # 503 with Retry-After: the server's honest "not now", never an error

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors + self.busy

    def quantile(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=1000, method="inclusive")[int(q * 1000) - 1]

    def merge(self, other: LoadResult) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.busy += other.busy
        self.error_samples += other.error_samples[: MAX_ERRORS_KEPT - len(self.error_samples)]
        self.bytes_received += other.bytes_received

    def summary(self) -> str:
        if not self.latencies:
            return f"{self.requests} requests, {self.errors} errors, no successful answer"
        rate = self.requests / self.seconds if self.seconds > 0 else float("nan")
        text = (
            f"{self.requests} requests in {self.seconds:.1f} s ({rate:.0f} req/s), "
            f"errors {self.errors}, 503 {self.busy}, p50 {self.quantile(0.5) * 1e3:.2f} ms, "
            f"p99 {self.quantile(0.99) * 1e3:.2f} ms, max {max(self.latencies) * 1e3:.2f} ms"
        )
        if self.bytes_received:
            text += f", {self.bytes_received / len(self.latencies) / 1024:.1f} KiB per answer"
        return text


def _check_scrape(response: requests.Response) -> str | None:
    """Why this answer is not a complete scrape, or None."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:120]!r}"
    body = response.content
    if not body.endswith(b"\n") or b"\ngpu_exporter_last_collect_timestamp_seconds " not in body:
        return f"incomplete body of {len(body)} bytes"
    return None


def _retry_after(response: requests.Response) -> float | None:
    """Seconds a 503 asks the client to wait, or None when the answer is no such refusal."""
    if response.status_code != 503:
        return None
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


@dataclass(frozen=True)
class ClientOptions:
    """How each scraper asks: headers, timeout, TLS verification, basic auth, source address."""

    headers: dict[str, str]
    timeout: float = 5.0
    verify: str | bool = True
    auth: tuple[str, str] | None = None
    source: str | None = None  # every scraper from this one address; None: each its own


def _scrape_thread(
    session: requests.Session, url: str, deadline: float, options: ClientOptions, result: LoadResult
) -> None:
    ask = {"headers": options.headers, "timeout": options.timeout, "auth": options.auth}
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            # verify on each call: REQUESTS_CA_BUNDLE in the environment beats a session's
            response = session.get(url, verify=options.verify, **ask)  # type: ignore[arg-type]
            wait = _retry_after(response)
            if wait is not None:  # refused honestly: wait as asked, as a polite client does
                result.busy += 1
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                continue
            problem = _check_scrape(response)
        except requests.RequestException as error:
            problem = f"{type(error).__name__}: {error}"
            response = None
        elapsed = time.perf_counter() - started
        if problem is None and response is not None:
            result.latencies.append(elapsed)
            result.bytes_received += len(response.content)
        else:
            result.errors += 1
            if len(result.error_samples) < MAX_ERRORS_KEPT:
                result.error_samples.append(problem or "no answer")


def _client_process(
    url: str, threads: int, first_client: int, seconds: float, options: ClientOptions
) -> LoadResult:
    deadline = time.monotonic() + seconds
    results = [LoadResult(seconds) for _ in range(threads)]
    # Each scraper is its own client, from its own loopback address, as separate machines would
    # be (the server caps the requests one address may have in flight), unless the run is about
    # many clients behind one address.
    addresses = ClientAddresses(base=first_client)
    workers = [
        threading.Thread(
            target=_scrape_thread,
            args=(addresses.session(options.source), url, deadline, options, result),
        )
        for result in results
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + options.timeout + 10)
    total = LoadResult(seconds)
    for result in results:
        total.merge(result)
    return total


def scrape_load(
    url: str,
    *,
    clients: int = 50,
    seconds: float = 10.0,
    client_processes: int = 5,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    verify: str | bool = True,
    auth: tuple[str, str] | None = None,
    source: str | None = None,
) -> LoadResult:
    """``clients`` scrapers, each a loop of GET ``url``, for ``seconds``; answers are checked.

    Each scraper comes from its own loopback address, or all from ``source``; a 503 with
    ``Retry-After`` is counted in ``busy`` and waited out, anything else but a complete scrape
    is an error.
    """
    options = ClientOptions(
        headers or {"Accept-Encoding": "identity"},
        timeout=timeout,
        verify=verify,
        auth=auth,
        source=source,
    )
    processes = max(1, min(client_processes, clients))
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    firsts = [sum(shares[:i]) for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        futures = [
            pool.submit(_client_process, url, share, first, seconds, options)
            for share, first in zip(shares, firsts)
        ]
        total = LoadResult(seconds)
        for future in futures:
            total.merge(future.result(timeout=seconds + timeout + 30))
    return total


def series_count(text: str) -> int:
    """Samples in a text exposition (lines that are not comments)."""
    return sum(1 for line in text.split("\n") if line and not line.startswith("#"))


class Churn:
    """Keeps ``n_processes`` real processes on ``n_gpus`` GPUs, replacing ``per_step`` each step.

    Each :meth:`step` starts fresh processes, writes the scenario with them, then retires the
    oldest, so the number of processes NVML lists stays the same and any growth in the
    exporter's series or memory is a leak. With ``faults``, steps in a ten-step cycle also lose
    a GPU, make fields fail, fail a global call, or list pids that have just exited.
    """

    def __init__(
        self,
        write: Callable[[fake.FakeScenario], None],
        *,
        n_gpus: int = 8,
        n_processes: int = 64,
        per_step: int = 8,
        faults: bool = True,
    ) -> None:
        self._write = write
        self._n_gpus = n_gpus
        self._per_step = per_step
        self._faults = faults
        self._workers = Workers()
        self._pids: list[int] = self._workers.start(n_processes)
        self.steps = 0
        self.pids_started = n_processes
        self.n_gpus = n_gpus
        write(fake.busy(n_gpus, self._pids, seed=0))

    @property
    def pids(self) -> list[int]:
        return list(self._pids)

    def step(self) -> None:
        """Replace ``per_step`` processes (and apply this step's fault, if any)."""
        self.steps += 1
        fresh = self._workers.start(self._per_step)
        self.pids_started += len(fresh)
        retired, self._pids = self._pids[: self._per_step], self._pids[self._per_step :] + fresh
        phase = self.steps % 10 if self._faults else 0
        if phase == 7:
            # Gone before NVML lists them: the lookup finds no such process.
            self._workers.retire(retired)
            self._write(self._scenario(phase, listed=self._pids + retired[:2]))
            return
        self._write(self._scenario(phase, listed=self._pids))
        self._workers.retire(retired)

    def run_for(self, seconds: float, *, period: float = 1.0) -> None:
        """One step every ``period`` seconds for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step()
            time.sleep(period)

    def clean(self) -> None:
        """Write the current processes without any fault."""
        self._write(self._scenario(0, listed=self._pids))

    def _scenario(self, phase: int, *, listed: Sequence[int]) -> fake.FakeScenario:
        scenario = fake.busy(self._n_gpus, list(listed), seed=self.steps)
        victim = self.steps // 10 % self._n_gpus
        if phase == 3:
            scenario.gpus[victim] = dataclasses.replace(scenario.gpus[victim], lost=True)
        elif phase == 5:
            scenario.gpus[victim] = dataclasses.replace(
                scenario.gpus[victim],
                # Errors that come and go. NOT_SUPPORTED never does on a real GPU: the exporter
                # remembers it for the session (fields every GPU lacks here show that path).
                fail={
                    "nvmlDeviceGetTemperature": NVML_ERROR_UNKNOWN,
                    "nvmlDeviceGetPowerUsage": NVML_ERROR_TIMEOUT,
                    "nvmlDeviceGetComputeRunningProcesses_v3": NVML_ERROR_UNKNOWN,
                },
            )
        elif phase == 9:
            scenario.fail = {"nvmlDeviceGetCount_v2": NVML_ERROR_UNKNOWN}
        return scenario

    def stop(self) -> None:
        self._workers.stop()

    def __enter__(self) -> Churn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_GPU_DOWN = re.compile(rb"^gpu_up\{[^\n]*\} 0\.0$", re.MULTILINE)


class Scraper:
    """Scrapes /metrics and posts /get-status in the background, as Prometheus and the page do.

    ``gpu_down_seen`` tells whether a scrape showed a GPU down, i.e. that a lost-GPU fault was
    actually served while scraping.
    """

    def __init__(self, exporter: ExporterProcess, *, period: float = 0.2) -> None:
        self._exporter = exporter
        self._period = period
        self._stop = threading.Event()
        self.result = LoadResult(0.0)
        self._started = time.monotonic()
        self.gpu_down_seen = False
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        session = requests.Session()
        url = self._exporter.url
        n = 0
        while not self._stop.wait(self._period):
            n += 1
            started = time.perf_counter()
            try:
                if n % 5:
                    response = session.get(f"{url}/metrics", timeout=5)
                else:
                    body = {"passwd": self._exporter.password}
                    response = session.post(f"{url}/get-status", json=body, timeout=5)
                problem = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except requests.RequestException as error:
                problem = str(error)
            elapsed = time.perf_counter() - started
            if problem is None:
                self.result.latencies.append(elapsed)
                self.gpu_down_seen |= bool(n % 5 and _GPU_DOWN.search(response.content))
            else:
                self.result.errors += 1
                if len(self.result.error_samples) < MAX_ERRORS_KEPT:
                    self.result.error_samples.append(problem)

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(10)
        self.result.seconds = time.monotonic() - self._started
        return self.result


def checkpoint(exporter: ExporterProcess, churn: Churn) -> tuple[int, int]:
    """Series count and RSS on a fault-free scenario holding the current processes."""
    churn.clean()
    wanted = set(churn.pids)

    def settled(text: str) -> bool:
        listed = {int(labels["pid"]) for labels in label_sets(text, "gpu_process_info")}
        return listed == wanted and values(text, "gpu_up") == [1.0] * churn.n_gpus

    text = exporter.wait_for_metrics(settled, timeout=10)
    return series_count(text), rss_bytes(exporter.process.pid)
