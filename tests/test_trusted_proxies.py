"""The status service behind a real reverse proxy (nginx): ``--web.trusted-proxies``.

Thirty viewers reach the page through nginx, each from its own address, so the service sees one
address for all of them. With the proxy trusted, each viewer has a share of its own; a hostile
viewer hammering through the proxy is limited alone, and a client that talks to the service
directly with a forged ``X-Forwarded-For`` naming a viewer is limited by its own address and
costs that viewer nothing. Without the flag (the control) the viewers share one address's share
and some of them are turned away: the measurement the flag is for.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from simulator.exporters import ClientAddresses
from tests.support.reverse_proxy import reverse_proxy

# No skip when nginx is missing: scripts/setup.sh installs it, and reverse_proxy says so.
pytestmark = pytest.mark.slow

VIEWERS = 30
HOSTILE_THREADS = 8
SECONDS = 4.0
SHARE = 2  # --web.max-requests-per-client, small so that sharing one address shows quickly
PROXY_ADDRESS = "127.0.0.1"  # nginx connects to the service from here
FORGER = "127.0.0.77"


def _ask(
    url: str, source: str, until: float, outcomes: Counter[str], headers: dict[str, str]
) -> None:
    session = ClientAddresses().session(source)
    while time.monotonic() < until:
        try:
            status = session.get(url, headers=headers, timeout=5).status_code
            outcomes[str(status)] += 1
        except requests.RequestException as error:
            outcomes[type(error).__name__] += 1


def _run(jobs: list[tuple[str, str, Counter[str], dict[str, str]]]) -> None:
    until = time.monotonic() + SECONDS
    threads = [threading.Thread(target=_ask, args=(*job[:2], until, *job[2:])) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 30)


@pytest.mark.parametrize("trusted", [True, False], ids=["proxy-trusted", "control-untrusted"])
def test_viewers_behind_a_proxy_each_have_their_own_share(
    status_service_factory, tmp_path: Path, trusted: bool
) -> None:
    flags = ["--web.max-requests-per-client", str(SHARE)]
    if trusted:
        flags += ["--web.trusted-proxies", f"{PROXY_ADDRESS}/32"]
    service = status_service_factory(["127.0.0.1:1"], *flags)
    with reverse_proxy(service.port, tmp_path / "nginx") as proxy:
        viewers = [Counter[str]() for _ in range(VIEWERS)]
        hostile, forger = Counter[str](), Counter[str]()
        page = f"{proxy}/api/v1/cluster"
        jobs = [(page, f"127.0.1.{n + 1}", viewers[n], {}) for n in range(VIEWERS)]
        jobs += [(page, "127.0.0.66", hostile, {})] * HOSTILE_THREADS
        forged = {"X-Forwarded-For": "127.0.1.5"}  # a viewer's address, straight to the service
        jobs += [(f"{service.url}/api/v1/cluster", FORGER, forger, forged)] * HOSTILE_THREADS
        _run(jobs)

    seen = sum(viewers, Counter[str]())
    print(f"\nviewers {dict(seen)}, hostile viewer {dict(hostile)}, forger {dict(forger)}")
    assert all(viewer["200"] > 0 for viewer in viewers), viewers
    assert forger["503"] > 0  # limited by its own address: the header bought it nothing
    if trusted:
        assert set(seen) == {"200"}, seen  # never a 503, whatever the others do
        assert hostile["503"] > 0  # its own share, alone
    else:
        assert seen["503"] > 0, seen  # one address for thirty viewers
