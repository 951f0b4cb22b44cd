"""A stand-in for a GPU node that still runs the old node_info.py, for mixed-fleet tests.

It serves real HTTP from a thread and answers the way node_info.py (a Flask app) did, which is
not quite how ``gpu-exporter`` answers:

* ``POST /get-status`` with ``{"passwd": "<right password>"}``: the node JSON, serialised as
  Flask's ``jsonify`` did (keys sorted alphabetically, compact, a final newline), a process's
  memory under ``mem(MiB)``; processes whose owner could not be read are left out, as
  node_info.py dropped them; no power readings and no GPU uuids anywhere;
* a wrong password, a body without one, or any other path (``/metrics`` included): 404 with
  Flask's HTML "Not Found" page, never 403;
* HTTP/1.0, one request per connection, as Werkzeug's development server.

``with OldNode(node_info_status("gpu-old", gpus), password="pw") as node:`` serves on a free
loopback port; ``node.entry`` is its hosts.txt line and ``node.paths`` the paths asked so far.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_NOT_FOUND = (
    b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    b"<p>The requested URL was not found on the server. If you entered the URL manually please "
    b"check your spelling and try again.</p>\n"
)
_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class OldProcess:
    """A GPU process as node_info.py saw it; ``username`` None: its owner could not be read."""

    pid: int
    username: str | None
    mem_mib: int
    command: str


@dataclass(frozen=True)
class OldGpu:
    index: int
    name: str
    use_mem: int
    tot_mem: int
    utilize: int
    temp: int
    processes: Sequence[OldProcess] = field(default_factory=tuple)


def node_info_status(
    hostname: str, gpus: Sequence[OldGpu], *, ips: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    """The document node_info.py built (before ``jsonify`` sorted its keys)."""
    return {
        "hostname": hostname,
        "last_update": "2023-04-29T21:17:41.419592",
        "ips": [[interface, address] for interface, address in ips or [("eth0", "10.0.0.9")]],
        "gpus": [
            {
                "index": gpu.index,
                "name": gpu.name,
                "use_mem": gpu.use_mem,
                "tot_mem": gpu.tot_mem,
                "utilize": gpu.utilize,
                "temp": gpu.temp,
                "users": [
                    {
                        "pid": process.pid,
                        "username": process.username,
                        "mem(MiB)": process.mem_mib,
                        "command": process.command,
                    }
                    for process in gpu.processes
                    if process.username is not None
                ],
            }
            for gpu in gpus
        ],
    }


def sample_gpus() -> list[OldGpu]:
    """Two GPUs: GPU 0 runs alice's and bob's jobs and a process whose owner is unreadable (so
    node_info.py leaves it out); GPU 1 is idle."""
    busy = OldGpu(
        index=0, name="NVIDIA GeForce RTX 3090", use_mem=20000, tot_mem=24576, utilize=97,
        temp=78, processes=(
            OldProcess(31337, "alice", 12288, "python train.py --epochs 90"),
            OldProcess(31338, "bob", 6144, "python -m jupyter lab"),
            OldProcess(31339, None, 1024, "/usr/bin/secret-job"),
        ),
    )  # fmt: skip
    idle = OldGpu(
        index=1, name="NVIDIA GeForce RTX 3090", use_mem=1, tot_mem=24576, utilize=0, temp=31
    )
    return [busy, idle]


def jsonify(document: Any) -> bytes:
    """Flask's ``jsonify`` with its old defaults: sorted keys, compact, ASCII, final newline."""
    return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode("ascii")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "Werkzeug/2.2.3"
    node: OldNode  # set on the per-node subclass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test output stays readable

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self) -> None:
        self._send(404, _NOT_FOUND, "text/html; charset=utf-8")

    def do_GET(self) -> None:
        self.node.paths.append(self.path)
        self._not_found()

    def do_POST(self) -> None:
        self.node.paths.append(self.path)
        length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
        body = self.rfile.read(length)
        try:
            password = json.loads(body).get("passwd")
        except (ValueError, UnicodeDecodeError, AttributeError):
            password = None
        if self.path != "/get-status" or password != self.node.password:
            self._not_found()
            return
        self._send(200, jsonify(self.node.status), "application/json")


class OldNode:
    """One old node on a free loopback port, served from a thread while in the ``with`` block."""

    def __init__(self, status: dict[str, Any], *, password: str) -> None:
        self.status = status
        self.password = password
        self.paths: list[str] = []
        handler = type("OldNodeHandler", (_Handler,), {"node": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="old-node", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def entry(self) -> str:
        """Its hosts.txt line."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> OldNode:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
