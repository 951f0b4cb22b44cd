"""A webhook receiver on loopback that records what a real Alertmanager posts to it.

Shared by the alerting tests (tests/test_alerting_e2e.py) and the fault suite
(tests/test_faults_engine.py).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class Webhook:
    """An HTTP server on loopback recording every JSON body posted to it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with webhook._lock:
                    webhook.posts.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # keep the test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification received so far, in order."""
        with self._lock:
            return [alert for post in self.posts for alert in post["alerts"]]

    def notifications(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """How many notifications (posts) so far hold an alert matching ``predicate``."""
        with self._lock:
            return sum(any(predicate(alert) for alert in post["alerts"]) for post in self.posts)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for alert in self.alerts():
                if predicate(alert):
                    return alert
            time.sleep(0.2)
        raise TimeoutError(f"no such alert at the webhook after {timeout} s: {self.alerts()!r}")


def firing(name: str, node: str, gpu: str) -> Callable[[dict[str, Any]], bool]:
    def match(alert: dict[str, Any]) -> bool:
        labels = alert["labels"]
        return (
            alert["status"] == "firing"
            and labels.get("alertname") == name
            and labels.get("node") == node
            and labels.get("gpu") == gpu
        )

    return match
