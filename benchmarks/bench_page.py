"""Benchmark the cluster page in Chromium at 1000 and 2000 nodes of 8 GPUs, before and after.

A real ``gpu-status-api`` polls simulated nodes (``simulator.nodes``, in a process of their own,
one port on many ``127.1.x.y`` addresses); every node has its own hostname (``gpu-0042``) and,
on its even GPUs, two processes: ``alice0042`` and ``bob42`` (one of 50 names). The page is
opened in Debian's Chromium through Playwright, once with the working tree's page ("after") and
once with the page script and style sheet of a git revision ("before", served in their place).
For each it reports:

* first render: from navigation to the first frame drawn with GPU rows on the page;
* long tasks (PerformanceObserver ``longtask``, over 50 ms) after the first render, over three
  refresh cycles: how many, the longest, and their sum;
* filter latency: typing ``alice0777`` into the user filter, key by key, until the page shows
  just that node and its four GPUs with processes: from the first key, and from the last.

With ``--changing F``, a share F of the nodes (0 to 1) answers with another utilization on one
of its GPUs at every poll, so that many nodes change from one refresh to the next, as on a busy
cluster; by default nothing changes but the nodes' last_seen.

Targets at 2000 nodes: first render under 2 s, no long task over 100 ms after it, the filter
settled within 300 ms of the last key. Run from the repository root::

    .venv/bin/python -m benchmarks.bench_page [--sizes 1000,2000] [--before main] [--changing F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests
from playwright.sync_api import Browser, Page, Route, sync_playwright

from simulator import REPO
from simulator.nodes import FakeNodes, free_port_on, legacy_status, loopback_addresses
from simulator.proc import ManagedProcess, free_port, wait_http

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
INTERVAL_S = 3.0  # the service's default polling interval, which the page refreshes at
FILTER_NODE = 777

# Runs before the page's own script: records long tasks and the first frame with GPU rows.
MEASURE = """
window.__bench = {longtasks: [], firstRender: null};
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__bench.longtasks.push([e.startTime, e.duration]);
}).observe({type: 'longtask', buffered: true});
document.addEventListener('DOMContentLoaded', () => {
  const nodes = document.getElementById('nodes');
  const watch = new MutationObserver(() => {
    if (!nodes.querySelector('tr.gpu')) return;
    watch.disconnect();
    // After the frame that lays out and paints the rows.
    requestAnimationFrame(() => setTimeout(() => {
      window.__bench.firstRender = performance.now();
    }, 0));
  });
  watch.observe(nodes, {childList: true, subtree: true});
});
"""

FILTERED = """([host, user]) => {
  const cards = document.querySelectorAll('#nodes article.node');
  if (cards.length !== 1) return false;
  if (cards[0].querySelector('.node-name').textContent !== host) return false;
  const rows = cards[0].querySelectorAll('tr.gpu');
  return rows.length === 4 && Array.from(rows).every(
    (row) => row.querySelector('.user-name').textContent === user);
}"""


def node_status(index: int) -> dict[str, Any]:
    """A node with its own hostname and, on its even GPUs, its own user and a shared one."""
    status = legacy_status(f"gpu-{index:04d}", gpus=8, users_per_gpu=2)
    for gpu in status["gpus"]:
        for user, name in zip(gpu["users"], (f"alice{index:04d}", f"bob{index % 50:02d}")):
            user["username"] = name
    return status


def serve_nodes(count: int, port: int, changing: float) -> None:
    """The simulated nodes, until killed (run as ``--serve-nodes``); a share ``changing`` of them
    takes another utilization on GPU 0 twice per polling interval."""
    nodes = FakeNodes(["ok"] * count, addresses=loopback_addresses(count), port=port)
    statuses = [node_status(index) for index in range(count)]
    moving = random.Random(0).sample(range(count), round(changing * count))

    async def run() -> None:
        await nodes.start()
        for index in range(count):
            nodes.set_status(index, statuses[index])
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        step = 0
        while True:
            await asyncio.sleep(INTERVAL_S / 2)
            step += 1
            for index in moving:
                statuses[index]["gpus"][0]["utilize"] = 50 + (index + step) % 50
                nodes.set_status(index, statuses[index])

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@contextmanager
def cluster(count: int, changing: float) -> Iterator[str]:
    """Simulated nodes and a gpu-status-api polling them; yields the service's URL."""
    addresses = loopback_addresses(count)
    node_port = free_port_on(addresses)
    command = [sys.executable, "-m", "benchmarks.bench_page", "--serve-nodes", str(count),
               "--port", str(node_port), "--changing", str(changing)]  # fmt: skip
    began = time.monotonic()
    nodes = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    workdir = Path(tempfile.mkdtemp(prefix="bench-page-"))
    service = None
    try:
        assert nodes.stdout is not None
        line = nodes.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"simulated nodes did not start: {line!r}")
        hosts = workdir / "hosts.txt"
        hosts.write_text("".join(f"{address}:{node_port}\n" for address in addresses))
        port = free_port()
        service = ManagedProcess(
            [sys.executable, "-m", "status_api", "-c", str(hosts), "--port", str(port),
             "--listen-address", "127.0.0.1", "--disable_log", "--interval", str(INTERVAL_S)],
            log_path=workdir / "status-api.log",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/ready", timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            summary = requests.get(f"{url}/api/v1/cluster", timeout=30).json()["summary"]
            if summary["nodes_online"] == count:
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"only {summary['nodes_online']} of {count} nodes came online")
        print(f"({count} nodes online after {time.monotonic() - began:.0f} s)", flush=True)
        yield url
    finally:
        if service is not None:
            service.stop()
        nodes.kill()
        nodes.wait()


@dataclass
class PageFigures:
    first_render_s: float
    long_tasks: int
    long_max_ms: float
    long_total_ms: float
    window_s: float
    filter_first_key_ms: float
    filter_last_key_ms: float


def static_from(revision: str, name: str) -> str:
    path = f"status_api/static/{name}"
    return subprocess.run(
        ["git", "show", f"{revision}:{path}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout


def _serve(body: str, kind: str) -> Callable[[Route], None]:
    def fulfil(route: Route) -> None:
        route.fulfill(status=200, content_type=kind, body=body)

    return fulfil


def open_page(browser: Browser, url: str, revision: str | None) -> Page:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, color_scheme="dark")
    page = context.new_page()
    page.add_init_script(MEASURE)
    if revision is not None:
        for name, kind in (("app.js", "application/javascript"), ("style.css", "text/css")):
            page.route(f"**/static/{name}", _serve(static_from(revision, name), kind))
    return page


def measure(browser: Browser, url: str, revision: str | None, count: int) -> PageFigures:
    page = open_page(browser, url, revision)
    try:
        page.goto(url + "/", wait_until="commit")
        page.wait_for_function(
            "() => window.__bench && window.__bench.firstRender !== null", timeout=120_000
        )
        first = page.evaluate("window.__bench.firstRender")
        window_s = 3 * INTERVAL_S + 0.5
        time.sleep(window_s)
        tasks = [t for t in page.evaluate("window.__bench.longtasks") if t[0] >= first]
        durations = [duration for _, duration in tasks]

        index = FILTER_NODE % count
        host, user = f"gpu-{index:04d}", f"alice{index:04d}"
        page.click("#filter-user", timeout=120_000)
        started = time.perf_counter()
        page.keyboard.type(user)
        typed = time.perf_counter()
        page.wait_for_function(FILTERED, arg=[host, user], polling="raf", timeout=120_000)
        settled = time.perf_counter()
        return PageFigures(
            first_render_s=first / 1000,
            long_tasks=len(durations),
            long_max_ms=max(durations, default=0.0),
            long_total_ms=sum(durations),
            window_s=window_s,
            filter_first_key_ms=(settled - started) * 1000,
            filter_last_key_ms=(settled - typed) * 1000,
        )
    finally:
        page.context.close()


def table_row(count: int, label: str, f: PageFigures) -> str:
    tasks = (f"{f.long_tasks} in {f.window_s:.0f} s, "
             f"max {f.long_max_ms:.0f} ms, sum {f.long_total_ms:.0f} ms")  # fmt: skip
    return (f"{count:>6} {label:<16} {f.first_render_s:>11.2f} s {tasks:>30} "
            f"{f.filter_first_key_ms:>17.0f} ms {f.filter_last_key_ms:>11.0f} ms")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000", help="node counts (default 1000,2000)")
    parser.add_argument(
        "--before", default="main",
        help="git revision whose page is 'before' (default main); '' to measure only 'after'",
    )  # fmt: skip
    parser.add_argument(
        "--changing", type=float, default=0.0,
        help="share of the nodes whose utilization changes at every poll (default 0)",
    )  # fmt: skip
    parser.add_argument("--serve-nodes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_nodes:
        serve_nodes(args.serve_nodes, args.port, args.changing)
        return 0
    variants: list[tuple[str, str | None]] = [("after", None)]
    if args.before:
        variants.insert(0, (f"before ({args.before})", args.before))
    if args.changing:
        print(f"{args.changing:.0%} of the nodes change at every poll")
    print(f"{'nodes':>6} {'page':<16} {'first render':>13} {'long tasks after it':>30} "
          f"{'filter from 1st key':>20} {'from last key':>14}")  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for count in (int(size) for size in args.sizes.split(",")):
                with cluster(count, args.changing) as url:
                    for label, revision in variants:
                        figures = measure(browser, url, revision, count)
                        print(table_row(count, label, figures), flush=True)
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
