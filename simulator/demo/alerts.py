"""Alertmanager for the demo, and the receiver its webhook points at: a small HTTP server in
the demo process that prints each notification's alerts to the demo's output."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from simulator.demo.common import DemoError, pick_port

MAX_BODY_BYTES = 1024 * 1024  # Alertmanager's notifications are a few KiB


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def alert_line(alert: Any) -> str:
    """One alert of a webhook notification as a line of the demo's output."""
    if not isinstance(alert, dict):
        return "alert: (malformed)"
    labels = _mapping(alert.get("labels"))
    annotations = _mapping(alert.get("annotations"))
    status = str(alert.get("status", "?"))
    name = str(labels.get("alertname", "?"))
    summary = str(annotations.get("summary", "")).strip()
    return f"alert {status}: {name} ({labels.get('severity', '?')}) {summary}".rstrip()


def _handler(out: TextIO) -> type[BaseHTTPRequestHandler]:
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.send_error(411, "Content-Length required")
                return
            if not 0 <= length <= MAX_BODY_BYTES:
                self.send_error(413, f"body over {MAX_BODY_BYTES} bytes")
                return
            try:
                body = json.loads(self.rfile.read(length))
                alerts = body["alerts"]
                if not isinstance(alerts, list):
                    raise TypeError("alerts is not a list")
            except (ValueError, KeyError, TypeError) as error:
                self.send_error(400, f"not an Alertmanager webhook notification: {error}")
                return
            for alert in alerts:
                print(alert_line(alert), file=out, flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the alerts are the output; request lines would drown them

    return Receiver


@contextlib.contextmanager
def running_alert_printer(*, out: TextIO = sys.stdout) -> Iterator[str]:
    """The receiver on 127.0.0.1; yields the URL for Alertmanager's webhook."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(out))
    thread = threading.Thread(target=server.serve_forever, name="alert-printer", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def alertmanager_installed() -> bool:
    from simulator.alertmanager import alertmanager_binary

    return alertmanager_binary() is not None and shutil.which("amtool") is not None


@contextlib.contextmanager
def running_demo_alertmanager(directory: Path) -> Iterator[tuple[str, str]]:
    """Alertmanager with the shipped configuration, its webhook at the printer; yields
    (URL, host:port for Prometheus). DemoError if it does not start."""
    # Imported here: without Alertmanager installed, the demo never needs these modules.
    from simulator.alertmanager import running_alertmanager

    with contextlib.ExitStack() as stack:
        webhook = stack.enter_context(running_alert_printer())
        try:
            server = stack.enter_context(
                running_alertmanager(
                    directory / "alertmanager",
                    webhook_url=webhook,
                    port=pick_port("127.0.0.1", 9093),
                )
            )
        except AssertionError as error:  # how the runner reports a failed start
            raise DemoError(f"Alertmanager did not start:\n{error}") from None
        yield server.url, server.address
