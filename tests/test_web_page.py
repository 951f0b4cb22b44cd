"""The cluster page in a real headless Chromium, against gpu-status-api and real exporters.

Asserts what a person sees: node cards, GPU rows, the offline node, free GPUs and temperatures,
the filters and the sort, auto-refresh picking up a scenario change (one timer, no reload), the
pause button, a node still running the old node_info.py shown like the others, lost and sick
GPUs saying so with their reasons, and that hostile text from the nodes is shown as text and
never run.
Screenshots go to build/artifacts/ (docs/screenshot.png is a copy of status-page.png).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from simulator.fakenvml import scenario as fake
from simulator.nodes import FakeNodes, legacy_status
from simulator.proc import free_port
from tests.support.old_node import OldNode, node_info_status, sample_gpus
from tests.support.status_service import PASSWORD, StatusService

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

# Counts the page's timers and cluster fetches (asked of its feed worker); runs before the page's
# own script. users.js
# keeps its own timer chain, counted apart (in __usersTimers).
INSTRUMENT = """
window.__timers = {pending: 0, most: 0, intervals: 0};
window.__usersTimers = {pending: 0, most: 0, intervals: 0};
window.__fetches = 0;
const realSetTimeout = window.setTimeout.bind(window);
window.setTimeout = (callback, ms, ...args) => {
  const t = /users\\.js/.test(new Error().stack) ? window.__usersTimers : window.__timers;
  t.pending += 1;
  t.most = Math.max(t.most, t.pending);
  return realSetTimeout(() => { t.pending -= 1; callback(...args); }, ms);
};
const realSetInterval = window.setInterval.bind(window);
window.setInterval = (...args) => {
  window.__timers.intervals += 1;
  return realSetInterval(...args);
};
// The page's feed worker (static/feed.js) fetches the cluster document when asked.
const realPost = Worker.prototype.postMessage;
Worker.prototype.postMessage = function (message, ...rest) {
  if (message && String(message.url).includes('api/v1/cluster')) window.__fetches += 1;
  return realPost.call(this, message, ...rest);
};
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; tests list it after the servers, so it closes before they stop."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, color_scheme="dark")
    opened = context.new_page()
    opened.add_init_script(INSTRUMENT)
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    yield opened
    context.close()
    assert problems == [], problems


@dataclass
class Cluster:
    service: StatusService
    exporters: dict[str, Any]
    pids: list[int]
    lab_box: FakeNodes


def _lab_box_status() -> dict[str, Any]:
    status = legacy_status("lab-box", gpus=2, users_per_gpu=0)
    status["gpus"][0]["users"] = [
        {"pid": 4101, "username": "alice", "mem(MiB)": 20480, "command": "python finetune.py"},
        {"pid": 4102, "username": "bob", "mem(MiB)": 8192, "command": "jupyter-lab"},
    ]
    status["gpus"][0].update(use_mem=28800, utilize=93, temp=71)
    status["gpus"][1]["users"] = [
        {"pid": 4103, "username": "bob", "mem(MiB)": 30000, "command": "python eval.py"},
    ]
    status["gpus"][1].update(use_mem=30200, utilize=64, temp=66)
    return status


@pytest.fixture
def cluster(
    exporter_factory: Callable[..., Any],
    worker_pids: Callable[[int], list[int]],
    status_service_factory: Callable[..., StatusService],
) -> Iterator[Cluster]:
    pids = worker_pids(9)
    busy = fake.busy(4, pids[:6], seed=5)
    busy.gpus[3] = fake.idle(4).gpus[3]  # one free GPU on the busy node
    busy.gpus[1].temperature = 88
    exporters = {
        "gpu-node-01": exporter_factory(busy, "--hostname", "gpu-node-01", password=PASSWORD),
        "gpu-node-02": exporter_factory(
            fake.idle(2), "--hostname", "gpu-node-02", password=PASSWORD
        ),
        "gpu-node-03": exporter_factory(
            fake.busy(2, pids[6:], seed=8), "--hostname", "gpu-node-03", password=PASSWORD
        ),
    }
    with FakeNodes(["ok"]) as lab_box:
        lab_box.set_status(0, _lab_box_status())
        hosts = [f"127.0.0.1:{e.port}" for e in exporters.values()]
        hosts += [*lab_box.hosts_lines(), f"127.0.0.1:{free_port()}"]
        service = status_service_factory(hosts, interval=0.5, timeout=0.8)
        service.wait_for(lambda d: d["summary"]["nodes_online"] == 4, what="four nodes online")
        yield Cluster(service, exporters, pids, lab_box)


def _card(page: Page, hostname: str):  # type: ignore[no-untyped-def]
    return page.locator("article.node", has=page.locator(".node-name", has_text=hostname))


def _visible_hostnames(page: Page) -> list[str]:
    return page.locator("article.node .node-name").all_inner_texts()


def test_page_shows_every_node_and_gpu(cluster: Cluster, artifacts: Path, page: Page) -> None:
    page.goto(cluster.service.url + "/")
    expect(page.locator("article.node")).to_have_count(5)
    names = _visible_hostnames(page)
    offline_entry = cluster.service.hosts_path.read_text().split()[-1]
    assert names == [offline_entry, "gpu-node-01", "gpu-node-02", "gpu-node-03", "lab-box"]

    summary = page.locator("#summary")
    expect(summary).to_contain_text("4 / 5")
    expect(summary).to_contain_text("1 offline")

    offline = page.locator("article.node.offline")
    expect(offline).to_have_count(1)
    expect(offline.locator(".badge")).to_have_text("offline")
    expect(offline.locator(".node-error")).to_have_text("cannot connect: Connection refused")
    expect(offline.locator("tr.gpu")).to_have_count(0)

    node1 = _card(page, "gpu-node-01")
    expect(node1.locator(".badge")).to_have_text("online")
    expect(node1.locator("tr.gpu")).to_have_count(4)
    expect(node1.locator("tr.gpu.free")).to_have_count(1)
    expect(node1.locator("tr.gpu.free .free-mark")).to_have_text("free")
    expect(node1.locator("tr.gpu").nth(1).locator(".gpu-temp")).to_have_text("88 °C")
    expect(node1.locator("tr.gpu").nth(1).locator(".gpu-temp")).to_have_class(
        re.compile(r"\bt-critical\b")
    )
    expect(node1.locator("tr.gpu").nth(0).locator(".user")).to_have_count(2)
    expect(node1.locator("tr.gpu").nth(0).locator(".gpu-power")).to_contain_text(" W")
    expect(_card(page, "gpu-node-02").locator("tr.gpu.free")).to_have_count(2)
    expect(_card(page, "lab-box").locator(".user-name")).to_have_text(["alice", "bob", "bob"])
    expect(page.locator("tr.gpu.free")).to_have_count(3)
    expect(page.locator("#updated")).to_have_text(re.compile(r"^updated \d+ s ago$"))

    page.screenshot(path=str(artifacts / "status-page.png"), full_page=True)


def test_filters_and_sort(cluster: Cluster, page: Page) -> None:
    page.goto(cluster.service.url + "/")
    expect(page.locator("article.node")).to_have_count(5)

    page.fill("#filter-user", "alice")
    expect(page.locator("article.node")).to_have_count(1)
    expect(page.locator("article.node .node-name")).to_have_text("lab-box")
    expect(page.locator("tr.gpu")).to_have_count(1)  # only the GPU alice uses

    page.fill("#filter-user", "bo")
    expect(page.locator("tr.gpu")).to_have_count(2)
    page.fill("#filter-user", "nobody-has-this-name")
    expect(page.locator("article.node")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    page.fill("#filter-user", "")

    page.check("#filter-free")
    expect(page.locator("tr.gpu")).to_have_count(3)
    expect(page.locator("tr.gpu.free")).to_have_count(3)
    assert sorted(_visible_hostnames(page)) == ["gpu-node-01", "gpu-node-02"]
    assert "free=1" in page.evaluate("location.hash")
    page.uncheck("#filter-free")

    page.fill("#filter-node", "node-03")
    expect(page.locator("article.node")).to_have_count(1)
    expect(page.locator("article.node .node-name")).to_have_text("gpu-node-03")
    page.fill("#filter-node", "")

    page.select_option("#sort", "free")
    expect(page.locator("article.node .node-name").first).to_have_text("gpu-node-02")
    page.select_option("#sort", "name")
    names = _visible_hostnames(page)
    assert names == sorted(names)

    # Filters live in the address, so a wall screen can be bookmarked with them.
    page.goto(cluster.service.url + "/#free=1&sort=free")
    expect(page.locator("#filter-free")).to_be_checked()
    expect(page.locator("tr.gpu")).to_have_count(3)


def test_auto_refresh_pause_and_one_timer(cluster: Cluster, page: Page) -> None:
    page.goto(cluster.service.url + "/")
    node2 = _card(page, "gpu-node-02")
    expect(node2.locator("tr.gpu.free")).to_have_count(2)
    page.evaluate("window.__sameDocument = true")

    cluster.exporters["gpu-node-02"].set_scenario(fake.busy(2, cluster.pids[:2], seed=2))
    expect(node2.locator("tr.gpu.free")).to_have_count(0, timeout=8000)
    expect(node2.locator(".user")).to_have_count(2)
    assert page.evaluate("window.__sameDocument") is True  # refreshed in place, not reloaded

    page.click("#pause")
    expect(page.locator("#pause")).to_have_text("Resume")
    expect(page.locator("#updated")).to_contain_text("paused")
    fetches = page.evaluate("window.__fetches")
    cluster.exporters["gpu-node-02"].set_scenario(fake.idle(2))
    time.sleep(3)
    assert page.evaluate("window.__fetches") == fetches
    expect(node2.locator("tr.gpu.free")).to_have_count(0)  # still the old picture

    page.click("#pause")
    expect(page.locator("#pause")).to_have_text("Pause")
    expect(node2.locator("tr.gpu.free")).to_have_count(2, timeout=8000)

    started = page.evaluate("window.__fetches")
    time.sleep(4)
    fetched = page.evaluate("window.__fetches") - started
    assert 2 <= fetched <= 6, fetched  # about one a second (the service polls every 0.5 s)
    timers = page.evaluate("window.__timers")
    assert timers["intervals"] == 0
    assert timers["most"] <= 1, timers  # one timer chain, never stacked
    assert page.evaluate("window.__usersTimers.most") <= 1  # the user table's own chain


def test_old_node_info_node_in_a_mixed_fleet(
    exporter_factory: Callable[..., Any],
    status_service_factory: Callable[..., StatusService],
    page: Page,
) -> None:
    exporter = exporter_factory(fake.idle(1), "--hostname", "gpu-new", password=PASSWORD)
    old_status = node_info_status("gpu-old", sample_gpus())
    locked_status = node_info_status("gpu-old-locked", sample_gpus())
    with (
        OldNode(old_status, password=PASSWORD) as old,
        OldNode(locked_status, password="other") as locked,
    ):
        hosts = [f"127.0.0.1:{exporter.port}", old.entry, locked.entry]
        service = status_service_factory(hosts, interval=0.5, timeout=0.8)
        service.wait_for(lambda d: d["summary"]["nodes_online"] == 2, what="two nodes online")
        page.goto(service.url + "/")
        expect(page.locator("article.node")).to_have_count(3)

        card = _card(page, "gpu-old")
        expect(card.locator(".badge")).to_have_text("online")
        expect(card.locator("tr.gpu")).to_have_count(2)
        busy = card.locator("tr.gpu").nth(0)
        expect(busy.locator(".user-name")).to_have_text(["alice", "bob"])
        expect(busy.locator(".user-mem")).to_have_text(["12 GiB", "6.0 GiB"])
        expect(busy.locator(".gpu-temp")).to_have_text("78 °C")
        expect(busy.locator(".gpu-power")).to_have_text("\u2013")  # node_info.py reports no power
        expect(card.locator("tr.gpu.free")).to_have_count(1)
        expect(_card(page, "gpu-new").locator(".badge")).to_have_text("online")

        offline = page.locator("article.node.offline")
        expect(offline).to_have_count(1)
        expect(offline.locator(".node-name")).to_have_text(locked.entry)
        expect(offline.locator(".node-error")).to_have_text(
            "HTTP 404: not found "
            "(an old node_info.py answers 404 to a wrong password; check the password)"
        )


def test_hostile_text_is_shown_as_text(
    exporter_factory: Callable[..., Any],
    status_service_factory: Callable[..., StatusService],
    page: Page,
) -> None:
    hostile_name = '<img src=x onerror="window.__xss=1"> "quoted" & \\'
    scenario = fake.idle(1)
    scenario.gpus[0].name = hostile_name
    exporter = exporter_factory(scenario, "--hostname", "<b>bold</b>", password=PASSWORD)
    shipped = exporter_factory(
        (REPO / "tests" / "scenarios" / "hostile.scn").read_bytes(),
        "--hostname", "gpu-hostile", password=PASSWORD,
    )  # fmt: skip
    status = legacy_status("<script>window.__xss=2</script>", gpus=1, users_per_gpu=1)
    status["gpus"][0]["users"][0].update(
        username="<svg onload=window.__xss=3>", command='"; window.__xss=4; "\n<iframe>'
    )
    with FakeNodes(["ok"]) as evil:
        evil.set_status(0, status)
        hosts = [f"127.0.0.1:{exporter.port}", *evil.hosts_lines(), f"127.0.0.1:{shipped.port}"]
        service = status_service_factory(hosts, interval=0.5, timeout=0.8)
        service.wait_for(lambda d: d["summary"]["nodes_online"] == 3, what="all online")
        page.goto(service.url + "/#sort=name")
        expect(page.locator("article.node")).to_have_count(3)
        expect(page.locator(".gpu-name").first).to_have_text(hostile_name)
        expect(_card(page, "gpu-hostile").locator(".gpu-name").first).to_have_text(
            "NVIDIA \"H100\" \\ <script>alert('x')</script> & %s %n ${x} # \ufffd\ufffd\ufffd"
        )
        expect(_card(page, "gpu-hostile").locator(".gpu-name").nth(1)).to_contain_text(
            "日本語 ☃ 🔥"
        )
        expect(page.locator(".node-name", has_text="<b>bold</b>")).to_have_count(1)
        expect(page.locator(".node-name", has_text="<script>")).to_have_count(1)
        chip = page.locator(".user", has=page.locator(".user-name", has_text="<svg"))
        expect(chip.locator(".user-name")).to_have_text("<svg onload=window.__xss=3>")
        title = chip.get_attribute("title")
        assert title is not None and title.endswith('"; window.__xss=4; "\n<iframe>')
        time.sleep(1.5)  # a couple of refreshes
        assert page.evaluate("window.__xss") is None
        assert page.locator("article.node img, article.node script, article.node svg").count() == 0
        assert page.locator("article.node b, article.node iframe").count() == 0


def test_jobs_pods_and_idle_held_gpus(
    status_service_factory: Callable[..., StatusService],
    page: Page,
) -> None:
    status = _lab_box_status()
    attribution = {
        4101: {"slurm_job": "77123", "sm_utilization": 0.0},
        4102: {"namespace": "ml", "pod": "notebook-0", "container": "jupyter", "sm_utilization": 0},
        4103: {"slurm_job": "77124", "sm_utilization": 0.64},
    }
    with FakeNodes(["ok"]) as lab_box:
        lab_box.set_status(0, status, attribution=attribution)
        service = status_service_factory(
            lab_box.hosts_lines(), "--power-interval", "0", "--idle-held-after", "1",
            interval=0.5, timeout=0.8,
        )  # fmt: skip
        service.wait_for(
            lambda d: d["nodes"][0]["gpus"][0]["idle_held"], what="GPU 0 idle but held"
        )
        page.goto(service.url + "/")
        rows = page.locator("tr.gpu")
        expect(rows).to_have_count(2)
        expect(rows.nth(0).locator(".user-job")).to_have_text("job 77123")
        expect(rows.nth(0).locator(".user-pod")).to_have_text("ml/notebook-0")
        expect(rows.nth(0).locator(".user-sm").first).to_have_text("SM 0 %")
        expect(rows.nth(1).locator(".user-sm")).to_have_text("SM 64 %")
        expect(rows.nth(0).locator(".idle-held-mark")).to_have_text("idle but held")
        expect(rows.nth(0).locator(".idle-held-since")).to_contain_text("since ")
        expect(rows.nth(1).locator(".idle-held-mark")).to_have_count(0)
        # The extra labels never squeeze the user's name out of sight.
        for name in rows.locator(".user-name").all():
            box = name.bounding_box()
            assert box is not None and box["width"] >= 20, (name.text_content(), box)

        page.fill("#filter-user", "77124")
        expect(page.locator("tr.gpu")).to_have_count(1)
        expect(page.locator("tr.gpu .user-job")).to_have_text("job 77124")
        page.fill("#filter-user", "notebook-0")
        expect(page.locator("tr.gpu")).to_have_count(1)
        expect(page.locator("tr.gpu.idle-held")).to_have_count(1)


def test_lost_and_sick_gpus(
    status_service_factory: Callable[..., StatusService],
    page: Page,
) -> None:
    status = legacy_status("sickbay", gpus=3, users_per_gpu=0)
    status["gpus"][0].update(use_mem=None, tot_mem=None, utilize=None, temp=None)
    status["gpus"][2]["utilize"] = 0  # free, as GPU 1 would be if it were not sick
    now = time.time()
    health = {
        0: {"gpu_up": 0, "gpu_last_xid": 79, "gpu_last_xid_timestamp_seconds": now - 5},
        1: {"gpu_last_xid": 48, "gpu_last_xid_timestamp_seconds": now - 5},
    }
    with FakeNodes(["ok"]) as sickbay:
        sickbay.set_status(0, status, health=health)
        service = status_service_factory(
            sickbay.hosts_lines(), "--power-interval", "0", interval=0.5, timeout=0.8
        )
        service.wait_for(
            lambda d: d["summary"]["gpus_lost"] == 1 and d["summary"]["gpus_sick"] == 1,
            what="one lost and one sick GPU",
        )
        page.goto(service.url + "/")
        rows = page.locator("tr.gpu")
        expect(rows).to_have_count(3)
        lost, sick, fine = rows.nth(0), rows.nth(1), rows.nth(2)
        expect(lost.locator(".gpu-lost .lost-mark")).to_have_text("lost")
        expect(lost.locator(".gpu-lost")).to_contain_text("the GPU stopped answering NVML")
        expect(lost.locator(".gpu-lost")).to_contain_text("(fell off the bus)")
        expect(lost.locator(".gpu-mem, .gpu-util, .gpu-temp, .gpu-power")).to_have_count(0)
        expect(lost.locator(".health-badge")).to_have_text("lost")

        clock = time.strftime("%H:%M", time.localtime(now - 5))
        expect(sick.locator(".health-badge")).to_have_text("sick")
        expect(sick.locator(".health-reasons")).to_have_text(
            f"XID 48 at {clock} (double-bit ECC error)"
        )
        assert sick.locator(".health-badge").get_attribute("title") == (
            f"XID 48 at {clock} (double-bit ECC error)"
        )
        expect(sick.locator(".free-mark")).to_have_count(0)
        expect(fine.locator(".health-badge")).to_have_count(0)
        expect(fine.locator(".free-mark")).to_have_text("free")
        stat = page.locator("#summary .stat", has_text="GPUs sick")
        expect(stat.locator(".stat-value")).to_have_text("2")
        expect(stat.locator(".stat-detail")).to_have_text("1 lost")


def test_gpu_use_per_user_and_a_click_filters_the_cluster_view(
    cluster: Cluster, page: Page
) -> None:
    page.goto(cluster.service.url + "/")
    expect(page.locator("article.node")).to_have_count(5)
    rows = page.locator("#usage tr.usage-row")
    names = rows.locator(".usage-name")
    # lab-box: bob holds two GPUs, alice one; the exporters' workers hold the others.
    expect(names.filter(has_text=re.compile(r"^bob$"))).to_have_count(1)
    bob = rows.filter(has=page.locator(".usage-pick", has_text=re.compile(r"^bob$")))
    alice = rows.filter(has=page.locator(".usage-pick", has_text=re.compile(r"^alice$")))
    expect(bob.locator(".usage-gpus")).to_have_text("2")
    expect(bob.locator(".usage-memory")).to_have_text("37 GiB")  # 8192 + 30000 MiB
    expect(alice.locator(".usage-gpus")).to_have_text("1")
    gpus = [int(text) for text in rows.locator(".usage-gpus").all_inner_texts()]
    assert gpus == sorted(gpus, reverse=True), gpus  # most GPUs first
    expect(page.locator("#usage th")).to_have_text(
        ["User", "GPUs", "Charged", "Memory", "Idle-held"]
    )

    bob.locator(".usage-pick").click()
    expect(page.locator("#filter-user")).to_have_value("bob")
    expect(page.locator("article.node")).to_have_count(1)
    expect(page.locator("tr.gpu")).to_have_count(2)  # only bob's GPUs
    assert "user=bob" in page.evaluate("location.hash")  # app.js's own filter ran

    alice.locator(".usage-pick").click()
    expect(page.locator("tr.gpu")).to_have_count(1)
    expect(page.locator("tr.gpu .user-name")).to_have_text(["alice", "bob"])

    page.click("#usage .usage-tab[data-list=slurm_jobs]")
    expect(page.locator("#usage .usage-tab[data-list=slurm_jobs]")).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(page.locator("#usage th").first).to_have_text("Slurm job")
    assert page.locator("#usage script, #usage img").count() == 0


DASH = "\u2013"  # what the charts show for a day without a value


def _history(user: str) -> dict[str, Any]:
    """A history document as the service answers it with an engine: seven days, the energy of
    the first two unknown, an idle day in the middle."""
    days = []
    for index, (hours, utilization, kwh) in enumerate(
        [(12.0, 0.5, None), (24.0, 0.25, None), (0.0, None, 0.0), (1.5, 1.0, 0.75),
         (48.0, 0.125, 12.5), (6.0, 0.75, 2.0), (3.25, 0.5, 1.25)]
    ):  # fmt: skip
        start = 1_796_083_200 + index * 86400  # 2026-12-01
        days.append({
            "date": time.strftime("%Y-%m-%d", time.gmtime(start)), "start": start,
            "end": start + 86400, "gpu_hours": hours, "mean_utilization": utilization,
            "energy_kwh": kwh,
        })  # fmt: skip
    return {"user": user, "configured": True, "generated_at": 0, "message": "", "days": days}


def test_a_users_own_view(cluster: Cluster, artifacts: Path, page: Page) -> None:
    """?user=NAME opens the user's view: the nodes filtered to them, what they hold, and in
    polling mode the message that history needs an engine; a click on an owner in a card opens
    another user's view without a reload, with the engine's days drawn as three bar charts."""
    page.goto(cluster.service.url + "/?user=bob")
    view = page.locator("#user-view")
    expect(view).to_be_visible()
    expect(view.locator(".user-title")).to_have_text("bob")
    expect(view.locator(".user-now")).to_contain_text("bob holds 2 GPUs now")
    expect(view.locator(".user-history-note")).to_contain_text("--prometheus-url")
    expect(view.locator("svg")).to_have_count(0)
    expect(page.locator("#filter-user")).to_have_value("bob")
    expect(page.locator("article.node")).to_have_count(1)
    expect(page.locator("tr.gpu")).to_have_count(2)

    # The engine's answer, as the service gives it with --prometheus-url.
    page.route(
        "**/api/v1/users/alice/history*",
        lambda route: route.fulfill(json=_history("alice")),
    )
    page.evaluate("window.__loaded = true")  # gone if the page reloads
    page.locator("article.node a.user-name", has_text=re.compile(r"^alice$")).click()
    expect(view.locator(".user-title")).to_have_text("alice")
    assert page.evaluate("window.__loaded") is True
    assert page.evaluate("new URLSearchParams(location.search).get('user')") == "alice"
    expect(page.locator("#filter-user")).to_have_value("alice")
    charts = view.locator("figure.user-chart")
    expect(charts).to_have_count(3)
    expect(charts.locator("figcaption")).to_have_text(
        ["GPU-hours per day", "Mean utilization", "Energy per day (kWh)"]
    )
    dates = ["12-01", "12-02", "12-03", "12-04", "12-05", "12-06", "12-07"]
    values = {
        "gpu_hours": ["12.0", "24.0", "0.0", "1.5", "48.0", "6.0", "3.3"],
        "mean_utilization": ["50%", "25%", DASH, "100%", "13%", "75%", "50%"],
        "energy_kwh": [DASH, DASH, "0.00", "0.75", "13", "2.00", "1.25"],
    }
    for key, texts in values.items():
        chart = view.locator(f"figure.user-chart[data-chart={key}]")
        expect(chart.locator("rect.user-bar")).to_have_count(7)
        expect(chart.locator("text.bar-label")).to_have_text(dates)
        expect(chart.locator("text.bar-value")).to_have_text(texts)
        expect(chart.locator("rect.user-bar.missing")).to_have_count(texts.count(DASH))
    # the tallest bar fills the plot, the others in proportion
    heights = [
        float(h or 0)
        for h in view.locator("[data-chart=gpu_hours] rect.user-bar").evaluate_all(
            "bars => bars.map(b => b.getAttribute('height'))"
        )
    ]
    assert heights[4] == max(heights) and math.isclose(heights[1], heights[4] / 2)
    view.screenshot(path=str(artifacts / "user-view.png"))

    page.go_back()  # back to bob's view
    expect(view.locator(".user-title")).to_have_text("bob")
    view.locator(".user-close").click()
    expect(view).to_be_hidden()
    expect(page.locator("#filter-user")).to_have_value("")
    expect(page.locator("article.node")).to_have_count(5)
    assert page.evaluate("location.search") == ""
