"""Load and a short soak against a real exporter on loopback, bounded in time.

* 50 concurrent clients scrape ``/metrics`` on the 8-GPU, 64-process scenario for 10 s: no error,
  every answer a complete scrape; p50/p99 are printed.
* The honest overload: the same 50 clients all from one address, over TLS with basic auth, for
  15 s: every answer a complete scrape or a 503 with ``Retry-After``, never a dropped connection
  or a TLS error.
* A 45 s soak with churn: every second eight of the 64 processes are replaced by fresh ones, and
  a ten-step cycle mixes in faults (a GPU lost, fields and the process list failing, the device
  count failing, pids gone before the lookup). A scraper runs throughout. After warm-up, the
  series count (measured on a fault-free scenario) must not change and RSS must stay within a
  small bound; no scrape may fail, and the log must hold no traceback.
* 1000 scrapes with distinct Accept headers within one snapshot do not grow memory.

``benchmarks/bench_load.py`` and ``benchmarks/bench_soak.py`` run the full-length versions.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from simulator.exporters import rss_bytes
from simulator.fakenvml import scenario as fake
from simulator.load import Churn, Scraper, checkpoint, scrape_load
from simulator.metrics import label_sets
from simulator.webconfig import write_web_config

pytestmark = [pytest.mark.soak, pytest.mark.slow]

CLIENTS = 50
LOAD_SECONDS = 10.0
ONE_ADDRESS_SECONDS = 15.0
SOAK_WARMUP_SECONDS = 15.0
SOAK_SECONDS = 30.0
RSS_TOLERANCE_BYTES = 4 * 2**20
DISTINCT_ACCEPT_HEADERS = 1000


def test_fifty_clients_scraping_8x64(exporter_factory, worker_pids, capsys) -> None:
    exporter = exporter_factory(fake.busy(8, worker_pids(64)))
    assert len(label_sets(exporter.metrics(), "gpu_process_info")) == 64

    result = scrape_load(f"{exporter.url}/metrics", clients=CLIENTS, seconds=LOAD_SECONDS)

    with capsys.disabled():
        print(f"\nload, {CLIENTS} clients on 8x64: {result.summary()}")
    assert result.errors == 0, result.error_samples
    assert result.busy == 0  # each from its own address: nobody is over their share
    assert result.requests > CLIENTS  # every client got answers, not just one each
    assert exporter.process.alive()
    assert "Traceback" not in exporter.log()


def test_fifty_clients_from_one_address_over_tls_get_only_200_and_503(
    exporter_factory, worker_pids, tmp_path, capsys
) -> None:
    auth = ("prometheus", "load-password")
    config, ca_file = write_web_config(tmp_path / "web", basic_auth=auth)
    exporter = exporter_factory(
        fake.busy(8, worker_pids(64)), "--web.config.file", str(config), scheme="https"
    )

    result = scrape_load(
        f"{exporter.url}/metrics",
        clients=CLIENTS,
        seconds=ONE_ADDRESS_SECONDS,
        verify=str(ca_file),
        auth=auth,
        source="127.0.0.1",
    )

    with capsys.disabled():
        print(f"\nload, {CLIENTS} clients from one address, TLS and basic auth: {result.summary()}")
    assert result.errors == 0, result.error_samples
    assert result.busy > 0  # more clients than one address's share: some were told to wait
    assert len(result.latencies) > CLIENTS
    assert exporter.process.alive()


@pytest.fixture
def churn_exporter(exporter_factory) -> Iterator[tuple]:
    exporter = exporter_factory(fake.idle(8))
    with Churn(exporter.set_scenario, n_gpus=8, n_processes=64, per_step=8) as churn:
        yield exporter, churn


def test_soak_with_churn_and_faults_stays_flat(churn_exporter, capsys) -> None:
    exporter, churn = churn_exporter
    scraper = Scraper(exporter)
    try:
        churn.run_for(SOAK_WARMUP_SECONDS)
        series_before, rss_before = checkpoint(exporter, churn)
        churn.run_for(SOAK_SECONDS)
        series_after, rss_after = checkpoint(exporter, churn)
    finally:
        scraped = scraper.stop()

    with capsys.disabled():
        print(
            f"\nsoak: {churn.steps} churn steps, {churn.pids_started} processes started; "
            f"series {series_before} -> {series_after}; RSS {rss_before / 2**20:.1f} -> "
            f"{rss_after / 2**20:.1f} MiB; background scrapes: {scraped.summary()}"
        )
    assert series_after == series_before
    assert rss_after - rss_before < RSS_TOLERANCE_BYTES
    assert scraped.errors == 0, scraped.error_samples
    assert scraped.requests > 100
    assert max(scraped.latencies) < 1.0  # faults never stall a scrape
    assert scraper.gpu_down_seen, "no scrape served the lost-GPU fault"
    log = exporter.log()
    assert exporter.process.alive(), log
    assert "Traceback" not in log, log


def test_distinct_accept_headers_do_not_grow_memory(exporter_factory, worker_pids) -> None:
    """A client sending a new Accept header every time does not get a cached copy each time.

    Renderings are cached per snapshot and format, and a format never echoes the Accept header.
    Each answer must still be the format asked for: a cache keyed too coarsely (one entry for
    every format) would also keep memory flat, but would answer text requests with OpenMetrics.
    """
    exporter = exporter_factory(fake.busy(8, worker_pids(64)), interval=60.0)  # one snapshot
    session = requests.Session()
    url = f"{exporter.url}/metrics"
    plain = {"Accept": "text/plain", "Accept-Encoding": "identity"}
    text = session.get(url, headers=plain, timeout=5).content
    assert not text.endswith(b"# EOF\n")
    first = session.get(
        url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}, timeout=5
    )
    open_metrics = first.content
    assert open_metrics.endswith(b"# EOF\n")
    before = rss_bytes(exporter.process.pid)
    for n in range(DISTINCT_ACCEPT_HEADERS):
        accept = f"application/openmetrics-text; version=1.0.0; q=0.{n:03d}, text/plain; q=0.0005"
        headers = {"Accept": accept, "Accept-Encoding": "identity"}
        response = session.get(url, headers=headers, timeout=5)
        assert response.status_code == 200
        # q=0.000 refuses OpenMetrics: the text format, asked for with less, is the answer.
        wanted = open_metrics if n else text
        assert response.content == wanted, accept
        assert response.headers["Content-Type"].startswith(
            "application/openmetrics-text; version=1.0.0;" if n else "text/plain; version=0.0.4;"
        )
        if n % 50 == 0:  # the text format, asked for between them, is still the text format
            assert session.get(url, headers=plain, timeout=5).content == text, n
    grown = rss_bytes(exporter.process.pid) - before
    # Uncached, 1000 renderings of ~40 KiB would be ~40 MiB.
    assert grown < 8 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"
