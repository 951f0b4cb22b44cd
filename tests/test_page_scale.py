"""The cluster page with many nodes, in a real headless Chromium against gpu-status-api.

300 simulated nodes of 8 GPUs (one process, one port on many ``127.x.y.z`` addresses): the page
draws quickly and stays responsive across refreshes (generous bounds: the machine is shared), it
builds GPU rows only near the viewport, a refresh keeps the DOM of every GPU that did not change
(and redraws the one that did), and the user filter finds one node among all. The MIG instances
of a GPU are drawn inside its row, from a fixed cluster document served in place of the
service's. ``benchmarks/bench_page.py`` measures the same at 1000 and 2000 nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from playwright.sync_api import Page, Route, expect

from simulator.nodes import FakeNodes, free_port_on, legacy_status, loopback_addresses
from tests.support.status_service import (  # noqa: F401 - fixture
    StatusService,
    status_service_factory,
)
from tests.test_web_page import browser, page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NODES = 300
INTERVAL = 0.5

# Runs before the page's script: long tasks, the first frame drawn with GPU rows, fetches.
MEASURE = """
window.__bench = {longtasks: [], firstRender: null, fetches: 0};
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__bench.longtasks.push([e.startTime, e.duration]);
}).observe({type: 'longtask', buffered: true});
// The page's feed worker (static/feed.js) fetches the cluster document when asked.
const realPost = Worker.prototype.postMessage;
Worker.prototype.postMessage = function (message, ...rest) {
  if (message && String(message.url).includes('api/v1/cluster')) window.__bench.fetches += 1;
  return realPost.call(this, message, ...rest);
};
document.addEventListener('DOMContentLoaded', () => {
  const nodes = document.getElementById('nodes');
  const watch = new MutationObserver(() => {
    if (!nodes.querySelector('tr.gpu')) return;
    watch.disconnect();
    requestAnimationFrame(() => setTimeout(() => {
      window.__bench.firstRender = performance.now();
    }, 0));
  });
  watch.observe(nodes, {childList: true, subtree: true});
});
"""


def node_status(index: int, *, utilize: int = 87) -> dict[str, Any]:
    """Node ``gpu-0042``: on its even GPUs the processes of ``alice0042`` and ``bob42``."""
    status = legacy_status(f"gpu-{index:04d}", gpus=8, users_per_gpu=2)
    for gpu in status["gpus"]:
        for user, name in zip(gpu["users"], (f"alice{index:04d}", f"bob{index % 50:02d}")):
            user["username"] = name
    status["gpus"][0]["utilize"] = utilize
    return status


@pytest.fixture
def large(
    status_service_factory: Callable[..., StatusService],  # noqa: F811
) -> Iterator[tuple[StatusService, FakeNodes]]:
    addresses = loopback_addresses(NODES, first="127.2.0.1")
    with FakeNodes(["ok"] * NODES, addresses=addresses, port=free_port_on(addresses)) as nodes:
        for index in range(NODES):
            nodes.set_status(index, node_status(index))
        service = status_service_factory(nodes.hosts_lines(), interval=INTERVAL, timeout=2.0)
        service.wait_for(
            lambda d: d["summary"]["nodes_online"] == NODES, what="all nodes online", timeout=60
        )
        yield service, nodes


def _fetches(opened: Page) -> int:
    return int(opened.evaluate("window.__bench.fetches"))


def _wait_refreshes(opened: Page, count: int) -> None:
    start = _fetches(opened)
    deadline = time.monotonic() + 30
    while _fetches(opened) < start + count + 1:  # +1: the one in flight may predate a change
        assert time.monotonic() < deadline, "the page stopped refreshing"
        time.sleep(0.1)


def test_many_nodes_draw_fast_and_stay_responsive(
    large: tuple[StatusService, FakeNodes],
    page: Page,  # noqa: F811
) -> None:
    service, _ = large
    page.add_init_script(MEASURE)
    page.goto(service.url + "/")
    page.wait_for_function("() => window.__bench.firstRender !== null", timeout=30_000)
    first = page.evaluate("window.__bench.firstRender")
    assert first < 5000, f"first render took {first:.0f} ms"  # about 0.5 s measured
    expect(page.locator("article.node")).to_have_count(NODES)

    # Only the cards near the viewport get GPU rows; the others have a placeholder.
    built = page.locator("tr.gpu").count()
    assert 0 < built < NODES * 8 / 5, built
    last = page.locator("article.node").last
    expect(last.locator(".gpus-pending")).to_have_count(1)
    last.scroll_into_view_if_needed()
    expect(last.locator("tr.gpu")).to_have_count(8)
    expect(last.locator(".node-name")).to_have_text(f"gpu-{NODES - 1:04d}")

    _wait_refreshes(page, 3)
    tasks = [t for t in page.evaluate("window.__bench.longtasks") if t[0] >= first]
    longest = max((duration for _, duration in tasks), default=0)
    assert longest < 600, tasks  # none measured

    # One node among all, by a user of its own, shortly after the last key.
    page.locator("#filter-user").click()
    page.keyboard.type("alice0123")
    typed = time.monotonic()
    cards = page.locator("article.node")
    expect(cards).to_have_count(1, timeout=5000)
    expect(cards.locator(".node-name")).to_have_text("gpu-0123")
    expect(cards.locator("tr.gpu")).to_have_count(4)
    assert time.monotonic() - typed < 2.0  # about 0.1 s measured
    assert "user=alice0123" in page.evaluate("location.hash")


def test_refresh_keeps_unchanged_gpus(
    large: tuple[StatusService, FakeNodes],
    page: Page,  # noqa: F811
) -> None:
    service, nodes = large
    page.add_init_script(MEASURE)
    page.goto(service.url + "/")
    card = page.locator("article.node", has=page.locator(".node-name", has_text="gpu-0000"))
    rows = card.locator("tr.gpu")
    expect(rows).to_have_count(8)
    expect(rows.nth(0).locator(".gpu-util")).to_have_text("87 %")
    # Tag the DOM objects: a rebuilt card or row would not carry the tag.
    page.evaluate(
        """() => {
          const card = document.querySelector('article.node[data-node]');
          card.__tag = 'card';
          card.querySelectorAll('tr.gpu').forEach((row, i) => { row.__tag = 'gpu ' + i; });
        }"""
    )
    tags = """() => {
      const card = document.querySelector('article.node[data-node]');
      const rows = Array.from(card.querySelectorAll('tr.gpu'), (row) => row.__tag || null);
      return [card.__tag || null, ...rows];
    }"""
    _wait_refreshes(page, 2)
    assert page.evaluate(tags) == ["card"] + [f"gpu {i}" for i in range(8)]

    nodes.set_status(0, node_status(0, utilize=12))
    expect(rows.nth(0).locator(".gpu-util")).to_have_text("12 %", timeout=10_000)
    # Only the GPU that changed got a new row; the card and the other rows are the same objects.
    assert page.evaluate(tags) == ["card", None] + [f"gpu {i}" for i in range(1, 8)]


CLUSTER = {
    "generated_at": 1_700_000_000.0,
    "interval": 1,
    "error": None,
    "summary": {
        "nodes_total": 1, "nodes_online": 1, "nodes_stale": 0, "nodes_offline": 0,
        "gpus_total": 2, "gpus_free": 0, "gpus_in_use": 2, "gpus_sick": 0, "gpus_lost": 0,
        "gpus_warning": 0, "memory_used_mib": 30000, "memory_total_mib": 163840,
    },
    "nodes": [{
        "node": "mig-box", "address": "mig-box:7080", "state": "online",
        "last_seen": 1_700_000_000.0, "error": None, "hostname": "mig-box", "ips": [],
        "gpus": [
            {
                "index": 0, "uuid": "GPU-a", "name": "NVIDIA A100", "use_mem": 25000,
                "tot_mem": 81920, "utilize": 50, "temp": 50, "power": 200, "power_limit": 400,
                "free": False, "idle_held": False, "idle_held_since": None, "health": None,
                "mig": [
                    {"uuid": "MIG-1", "gpu_instance": 1, "compute_instance": 0,
                     "profile": "3g.40gb", "memory_used_mib": 20000, "memory_total_mib": 40192},
                    {"uuid": "MIG-2", "gpu_instance": 2, "compute_instance": 0,
                     "profile": "1g.10gb", "memory_used_mib": 0, "memory_total_mib": 9984},
                ],
                "users": [
                    {"pid": 1, "username": "carol", "mem": 20000, "command": "train",
                     "mig_uuid": "MIG-1", "sm_utilization": None},
                    {"pid": 2, "username": "dave", "mem": 5000, "command": "probe",
                     "mig_uuid": "", "sm_utilization": None},
                ],
            },
            {   # an older service: no uuid, no mig, no mig_uuid
                "index": 1, "name": "NVIDIA A100", "use_mem": 5000, "tot_mem": 81920,
                "utilize": 40, "temp": 45, "power": None, "power_limit": None, "free": False,
                "idle_held": False, "idle_held_since": None,
                "users": [{"pid": 3, "username": "erin", "mem": 5000, "command": "x"}],
            },
        ],
    }],
}  # fmt: skip


def test_mig_instances_in_the_gpu_row(
    status_service_factory: Callable[..., StatusService],  # noqa: F811
    page: Page,  # noqa: F811
) -> None:
    with FakeNodes(["ok"]) as one:
        service = status_service_factory(one.hosts_lines(), interval=INTERVAL, timeout=0.8)

        def cluster(route: Route) -> None:
            route.fulfill(status=200, content_type="application/json", body=json.dumps(CLUSTER))

        page.route("**/api/v1/cluster", cluster)
        page.goto(service.url + "/")
        rows = page.locator("tr.gpu")
        expect(rows).to_have_count(2)
        migs = rows.nth(0).locator(".mig")
        expect(migs).to_have_count(2)
        expect(migs.locator(".mig-profile")).to_have_text(["3g.40gb", "1g.10gb"])
        expect(migs.locator(".mig-place")).to_have_text(["GI 1 · CI 0", "GI 2 · CI 0"])
        expect(migs.locator(".bar-label")).to_have_text(["20 GiB / 39 GiB", "0 MiB / 9.8 GiB"])
        expect(migs.nth(0).locator(".user-name")).to_have_text("carol")
        expect(migs.nth(1).locator(".no-users")).to_have_text("no processes")
        # Not on an instance: shown with the GPU, outside the instances.
        direct = rows.nth(0).locator("td.gpu-users > .user .user-name")
        expect(direct).to_have_text("dave")
        expect(rows.nth(1).locator(".mig")).to_have_count(0)
        expect(rows.nth(1).locator(".user-name")).to_have_text("erin")

        page.fill("#filter-user", "carol")
        expect(page.locator("tr.gpu")).to_have_count(1)
        expect(page.locator("tr.gpu .mig .user-name")).to_have_text("carol")
