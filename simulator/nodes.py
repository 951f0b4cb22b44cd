"""Simulated nodes behind one asyncio server, for the status service's fault tests and benchmark.

Each fake node is a listening address (``127.0.0.1`` with its own port, or one port on many
``127.x.y.z`` addresses) that speaks just enough HTTP/1.1 (keep-alive, Content-Length) to answer
``POST /get-status`` with legacy node JSON, or to misbehave on purpose:

* ``ok``: the legacy JSON (and a ``/metrics`` text with power readings, GPU health, MIG devices
  and process attribution; with ``exporter_metrics=True`` the real exporter's whole ``/metrics``,
  rendered by ``exporter.collector`` from a snapshot built from the node's status, see
  :func:`exporter_metrics`);
* ``hang``: read the request and never answer;
* ``garbage``: 200 with bytes that are not JSON; ``wrong-shape``: JSON that is not a status;
* ``forbidden``: a 403 JSON error; ``close``: close the connection without answering;
* ``drip``: a valid answer, one byte every 0.2 s;
* ``huge``: an endless body with a huge Content-Length; ``huge-chunked``: an endless chunked one;
* ``redirect``: a 307 to ``redirect_to`` for every request; ``redirect-metrics``: ``ok``, except
  that ``/metrics`` is a 307 to ``redirect_to``.

:class:`RecordingListener` stands for another local service a redirect could point at: it records
every connection and every byte it receives.

In a test: ``with FakeNodes(["ok", "hang"]) as nodes: nodes.hosts_lines() ...`` runs the server in
a thread; ``nodes.set(i, "hang")`` changes a node's behaviour while it runs. The benchmark runs it
as its own process: ``python -m simulator.nodes --count 1000 --dead 10 --port 17080``
prints one line ``READY`` and then serves until killed (``--exporter-metrics``: each node's
``/metrics`` is the exporter's, for Prometheus or VictoriaMetrics to scrape).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.collector import render
from exporter.snapshot import (
    CollectorStatus,
    DriverInfo,
    GpuSample,
    HostInfo,
    ProcessSample,
    Snapshot,
    XidSample,
)

BEHAVIOURS = (
    "ok",
    "hang",
    "garbage",
    "wrong-shape",
    "forbidden",
    "drip",
    "huge",
    "huge-chunked",
    "close",
    "redirect",
    "redirect-metrics",
)
_MAX_HEAD = 16 * 1024


def legacy_status(hostname: str, *, gpus: int = 8, users_per_gpu: int = 2) -> dict[str, Any]:
    """A plausible node answer in the legacy schema."""
    return {
        "hostname": hostname,
        "last_update": "2024-05-01T12:00:00.000000",
        "ips": [["eth0", "10.0.0.1"]],
        "gpus": [
            {
                "index": index,
                "name": "NVIDIA A100-SXM4-80GB",
                "use_mem": 1200 * users_per_gpu if index % 2 == 0 else 0,
                "tot_mem": 81920,
                "utilize": 87 if index % 2 == 0 else 0,
                "temp": 40 + index * 4,
                "users": [
                    {
                        "pid": 10000 + index * 100 + u,
                        "username": f"user{u}",
                        "mem(MiB)": 1200,
                        "command": f"python train.py --gpu {index} --run {u}",
                    }
                    for u in range(users_per_gpu if index % 2 == 0 else 0)
                ],
            }
            for index in range(gpus)
        ],
    }


def default_attribution(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per pid: a Slurm job (500000 + pid) and SM utilization equal to its GPU's utilization."""
    return {
        user["pid"]: {
            "slurm_job": str(500000 + user["pid"]),
            "sm_utilization": (gpu["utilize"] or 0) / 100,
        }
        for gpu in status["gpus"]
        for user in gpu["users"]
    }


# The health families a healthy GPU reports, with their values (gpu_last_xid and its timestamp
# only appear once the GPU has had an XID; gpu_mig_mode only on MIG-capable GPUs).
HEALTHY = {
    "gpu_up": 1,
    "gpu_remapped_rows_pending": 0,
    "gpu_remapped_rows_failure": 0,
    "gpu_pcie_link_generation": 4,
    "gpu_pcie_link_generation_max": 4,
    "gpu_pcie_link_width": 16,
    "gpu_pcie_link_width_max": 16,
}


def _health_lines(
    status: dict[str, Any], health: Mapping[int, Mapping[str, float | None]]
) -> list[str]:
    per_gpu = {gpu["index"]: {**HEALTHY, **health.get(gpu["index"], {})} for gpu in status["gpus"]}
    families = dict.fromkeys(name for values in per_gpu.values() for name in values)
    lines = []
    for family in families:
        lines.append(f"# HELP {family} Simulated.\n# TYPE {family} gauge")
        for index, values in per_gpu.items():
            if values.get(family) is not None:
                lines.append(f'{family}{{gpu="{index}",uuid="GPU-{index}"}} {values[family]}')
    return lines


def _mig_lines(mig: Mapping[int, Sequence[Mapping[str, Any]]]) -> list[str]:
    """``gpu_mig_info`` and the MIG memory gauges, as the exporter writes them."""
    info = ["# HELP gpu_mig_info Simulated.\n# TYPE gpu_mig_info gauge"]
    memory: dict[str, list[str]] = {"used": [], "total": []}
    for index, devices in mig.items():
        for device in devices:
            ids = {"gi": device.get("gi"), "ci": device.get("ci")}
            where = f'gpu="{index}",uuid="GPU-{index}",mig_uuid="{device["uuid"]}",' + ",".join(
                f'{name}="{"" if value is None else value}"' for name, value in ids.items()
            )
            info.append(f'gpu_mig_info{{{where},profile="{device.get("profile", "")}"}} 1')
            for kind, lines in memory.items():
                value = device.get(f"memory_{kind}_bytes")
                if value is not None:
                    lines.append(f"gpu_mig_memory_{kind}_bytes{{{where}}} {value}")
    return [
        *info,
        *(
            f"# HELP gpu_mig_memory_{kind}_bytes Simulated.\n"
            f"# TYPE gpu_mig_memory_{kind}_bytes gauge\n" + "\n".join(lines)
            for kind, lines in memory.items()
            if lines
        ),
    ]


def metrics_text(
    status: dict[str, Any],
    attribution: Mapping[int, Mapping[str, Any]] | None = None,
    health: Mapping[int, Mapping[str, float | None]] | None = None,
    mig: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
) -> bytes:
    """A Prometheus exposition like the exporter's, roughly as long, with power readings, GPU
    health, MIG devices and, per process, ``gpu_process_info`` and
    ``gpu_process_sm_utilization_ratio``.
    ``attribution`` gives per pid the labels slurm_job, container, pod, namespace, mig_uuid and
    ``sm_utilization`` (None: no utilization line); by default :func:`default_attribution`.
    ``health`` gives per GPU index health families and values that replace or add to
    :data:`HEALTHY` (None: no line), e.g. ``{1: {"gpu_up": 0, "gpu_last_xid": 79, ...}}``.
    ``mig`` gives per GPU index its MIG devices, each with ``uuid`` and optionally ``gi``,
    ``ci``, ``profile``, ``memory_used_bytes`` and ``memory_total_bytes`` (None or missing: an
    empty id label, or no memory line), e.g. ``{0: [{"uuid": "MIG-a", "gi": 1, "ci": 0,
    "profile": "3g.40gb", "memory_total_bytes": 40 << 30}]}``; pair it with ``gpu_mig_mode``
    in ``health`` for a consistent node."""
    if attribution is None:
        attribution = default_attribution(status)
    lines = _health_lines(status, health or {})
    if mig:
        lines += _mig_lines(mig)
    families = (
        "memory_used_bytes", "memory_total_bytes", "utilization_ratio", "temperature_celsius",
        "power_watts", "power_limit_watts", "fan_speed_ratio", "energy_joules_total",
    )  # fmt: skip
    for family in families:
        lines.append(f"# HELP gpu_{family} Simulated.\n# TYPE gpu_{family} gauge")
        for gpu in status["gpus"]:
            value = {"power_watts": 100 + 25 * gpu["index"], "power_limit_watts": 400}.get(
                family, 1
            )
            lines.append(f'gpu_{family}{{gpu="{gpu["index"]}",uuid="GPU-{gpu["index"]}"}} {value}')
    for gpu in status["gpus"]:
        for user in gpu["users"]:
            mig_uuid = attribution.get(user["pid"], {}).get("mig_uuid", "")
            labels = (
                f'gpu="{gpu["index"]}",pid="{user["pid"]}",user="{user["username"]}",'
                f'mig_uuid="{mig_uuid}"'
            )
            lines.append(f"gpu_process_memory_used_bytes{{{labels}}} {user['mem(MiB)'] * 1048576}")
    for gpu in status["gpus"]:
        for user in gpu["users"]:
            process = attribution.get(user["pid"], {})
            where = f'gpu="{gpu["index"]}",uuid="GPU-{gpu["index"]}",pid="{user["pid"]}"'
            info = ",".join(
                f'{name}="{process.get(name, "")}"'
                for name in ("mig_uuid", "slurm_job", "container", "pod", "namespace")
            )
            lines.append(f'gpu_process_info{{{where},user="{user["username"]}",{info}}} 1')
            if process.get("sm_utilization") is not None:
                ratio = process["sm_utilization"]
                lines.append(f"gpu_process_sm_utilization_ratio{{{where}}} {ratio}")
    return ("\n".join(lines) + "\n").encode()


_MIB = 1048576
_COLLECT_LINE = b"\ngpu_exporter_last_collect_timestamp_seconds "


def exporter_snapshot(
    status: dict[str, Any],
    attribution: Mapping[int, Mapping[str, Any]] | None = None,
    *,
    timestamp: float = 0.0,
) -> Snapshot:
    """The exporter's snapshot of a node with this legacy status: every reading an A100 with MIG
    off reports (ECC, clocks, throttle reasons, row remapping, PCIe, energy; NVLinks left out),
    and per process its user, command and ``attribution`` (default :func:`default_attribution`)."""
    if attribution is None:
        attribution = default_attribution(status)
    host = status["hostname"]
    gpus = []
    for gpu in status["gpus"]:
        index = gpu["index"]
        processes = tuple(
            ProcessSample(
                pid=user["pid"],
                kind="compute",
                gpu_memory_bytes=user["mem(MiB)"] * _MIB,
                user=user["username"],
                command=user["command"],
                slurm_job=str(attribution.get(user["pid"], {}).get("slurm_job", "")),
                sm_utilization_ratio=attribution.get(user["pid"], {}).get("sm_utilization"),
                memory_utilization_ratio=0.1,
            )
            for user in gpu["users"]
        )
        used = (gpu["use_mem"] or 0) * _MIB
        total = gpu["tot_mem"] * _MIB
        gpus.append(
            GpuSample(
                index=index,
                up=True,
                uuid=f"GPU-{host}-{index:02d}",
                name=gpu["name"],
                serial=f"13240{index:05d}",
                pci_bus_id=f"00000000:{0x10 + index:02X}:00.0",
                memory_total_bytes=total,
                memory_used_bytes=used,
                memory_free_bytes=total - used,
                utilization_ratio=(gpu["utilize"] or 0) / 100,
                memory_utilization_ratio=0.2,
                temperature_celsius=float(gpu["temp"]),
                power_watts=100.0 + 25 * index,
                power_limit_watts=400.0,
                energy_joules=1.5e9 + index,
                fan_speed_ratio=0.3,
                clock_sm_hertz=1.41e9,
                clock_memory_hertz=1.593e9,
                performance_state=0,
                ecc_corrected_errors=0,
                ecc_uncorrected_errors=0,
                throttle_reasons=0,
                ecc_aggregate_corrected_errors=0,
                ecc_aggregate_uncorrected_errors=0,
                remapped_rows_corrected=0,
                remapped_rows_uncorrected=0,
                remapped_rows_pending=False,
                remapped_rows_failure=False,
                pcie_replay_errors=0,
                pcie_link_generation=4,
                pcie_link_generation_max=4,
                pcie_link_width=16,
                pcie_link_width_max=16,
                mig_mode=False,
                mig_mode_pending=False,
                xid=XidSample(),
                processes=processes,
            )
        )
    return Snapshot(
        timestamp=timestamp,
        host=HostInfo(hostname=host, ips=tuple((name, ip) for name, ip in status["ips"])),
        driver=DriverInfo("550.54.15", "12.4", "12.550.54.15"),
        gpus=tuple(gpus),
        collectors=(
            CollectorStatus("nvml", True, 0.004),
            CollectorStatus("processes", True, 0.002),
        ),
    )


def exporter_metrics(
    status: dict[str, Any], attribution: Mapping[int, Mapping[str, Any]] | None = None
) -> tuple[bytes, bytes]:
    """The exporter's ``/metrics`` of :func:`exporter_snapshot`, rendered once by the exporter's
    own collector, split around the value of ``gpu_exporter_last_collect_timestamp_seconds``:
    the server puts the current time there, as a live exporter's sampling pass would."""
    text = render(exporter_snapshot(status, attribution))
    start = text.index(_COLLECT_LINE) + len(_COLLECT_LINE)
    return text[:start], text[text.index(b"\n", start) :]


def _response(status: str, body: bytes, *, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode("ascii") + body


class FakeNodes:
    """The fake nodes and their server; use as a context manager (thread) or :meth:`serve`."""

    def __init__(
        self,
        behaviours: Sequence[str],
        *,
        addresses: Sequence[str] | None = None,
        port: int = 0,
        gpus: int = 8,
        users_per_gpu: int = 2,
        exporter_metrics: bool = False,
    ) -> None:
        for behaviour in behaviours:
            if behaviour not in BEHAVIOURS:
                raise ValueError(f"unknown behaviour {behaviour!r}")
        self.behaviours = list(behaviours)
        self._addresses = list(addresses) if addresses else None
        self._port = port
        self._gpus = gpus
        self._users = users_per_gpu
        self._bodies: list[bytes] = []
        self._metrics: list[bytes] = []
        # With exporter_metrics: per node, the exporter's text before and after the time of
        # its last sampling pass.
        self._exporter_metrics = exporter_metrics
        self._exporter_parts: list[tuple[bytes, bytes]] = []
        self._endpoints: list[tuple[str, int]] = []
        self._index: dict[tuple[str, int], int] = {}
        self.requests = 0
        self.redirect_to = "http://127.0.0.1:9/"  # where the redirect behaviours point
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._ready = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeNodes:
        self._thread = threading.Thread(target=self._run_thread, name="fake-nodes", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("fake nodes did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run_thread(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        loop.run_until_complete(self.start())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for server in self._servers:
                server.close()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def start(self) -> None:
        """Bind every node's socket (call inside a running loop)."""
        count = len(self.behaviours)
        if self._addresses is not None:
            if len(self._addresses) != count:
                raise ValueError("one address per node")
            server = await asyncio.start_server(
                self._handle, host=self._addresses, port=self._port, backlog=1024
            )
            self._servers.append(server)
            bound = {sock.getsockname()[0] for sock in server.sockets}
            port = server.sockets[0].getsockname()[1]
            self._endpoints = [(address, port) for address in self._addresses]
            assert bound == set(self._addresses)
        else:
            for _ in range(count):
                server = await asyncio.start_server(self._handle, host="127.0.0.1", port=0)
                self._servers.append(server)
                self._endpoints.append(server.sockets[0].getsockname()[:2])
        self._index = {endpoint: i for i, endpoint in enumerate(self._endpoints)}
        statuses = [
            legacy_status(f"fake{i}", gpus=self._gpus, users_per_gpu=self._users)
            for i in range(count)
        ]
        self._bodies = [json.dumps(status).encode() for status in statuses]
        self._metrics = [metrics_text(status) for status in statuses]
        if self._exporter_metrics:
            self._exporter_parts = [exporter_metrics(status) for status in statuses]
        self._loop = asyncio.get_running_loop()

    async def serve(self) -> None:
        await self.start()
        await asyncio.Event().wait()

    # -- what tests use ------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return list(self._endpoints)

    def hosts_lines(self) -> list[str]:
        return [f"{address}:{port}" for address, port in self._endpoints]

    def set(self, index: int, behaviour: str) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        self.behaviours[index] = behaviour

    def set_status(
        self,
        index: int,
        status: dict[str, Any],
        *,
        attribution: Mapping[int, Mapping[str, Any]] | None = None,
        health: Mapping[int, Mapping[str, float | None]] | None = None,
        mig: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self._bodies[index] = json.dumps(status).encode()
        self._metrics[index] = metrics_text(status, attribution, health, mig)
        if self._exporter_metrics:
            self._exporter_parts[index] = exporter_metrics(status, attribution)

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoint = tuple(writer.get_extra_info("sockname")[:2])
        index = self._index.get(endpoint, 0)
        try:
            while await self._one_request(index, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # shutting down; ending quietly keeps the logs clean
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD:
            return False
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or 0)
        if length:
            await reader.readexactly(min(length, 65536))
        self.requests += 1
        behaviour = self.behaviours[index]
        if head.split(b" ", 2)[1:2] == [b"/metrics"] and behaviour in ("ok", "redirect-metrics"):
            if behaviour == "ok":
                writer.write(
                    _response("200 OK", self._metrics_body(index), content_type="text/plain")
                )
            else:
                writer.write(self._redirect())
            await writer.drain()
            return True
        return await self._answer(behaviour, index, reader, writer)

    def _metrics_body(self, index: int) -> bytes:
        if not self._exporter_metrics:
            return self._metrics[index]
        before, after = self._exporter_parts[index]
        return before + f"{time.time():.3f}".encode() + after

    def _redirect(self) -> bytes:
        return (
            "HTTP/1.1 307 Temporary Redirect\r\nContent-Length: 0\r\n"
            f"Location: {self.redirect_to}\r\nConnection: keep-alive\r\n\r\n"
        ).encode("ascii")

    async def _answer(
        self,
        behaviour: str,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if behaviour in ("ok", "redirect-metrics"):
            writer.write(_response("200 OK", self._bodies[index]))
        elif behaviour == "redirect":
            writer.write(self._redirect())
        elif behaviour == "hang":
            await reader.read()  # until the client gives up and closes
            return False
        elif behaviour == "close":
            return False
        elif behaviour == "garbage":
            writer.write(_response("200 OK", b"\x00\xff<html>not json</html>"))
        elif behaviour == "wrong-shape":
            writer.write(_response("200 OK", b'{"hostname": 5, "gpus": "many"}'))
        elif behaviour == "forbidden":
            writer.write(_response("403 Forbidden", b'{"error": "wrong password"}'))
        elif behaviour == "drip":
            await self._drip(writer, self._bodies[index])
        else:
            await self._flood(writer, chunked=behaviour == "huge-chunked")
            return False
        await writer.drain()
        return True

    async def _drip(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        for byte in _response("200 OK", body):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    async def _flood(self, writer: asyncio.StreamWriter, *, chunked: bool) -> None:
        """Send an endless body until the client hangs up (bounded: 1 GiB at most)."""
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
        block = b"[" * 65536
        chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
        for _ in range(16384):
            writer.write(chunk)
            await writer.drain()


class RecordingListener:
    """A TCP listener on 127.0.0.1 that records every connection and byte; use as a context
    manager. It answers each request with an error naming itself, as a real service would."""

    ANSWER = (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 40\r\n"
        b"Connection: close\r\n\r\n" + b'{"error": "internal admin service says"}'
    )

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.port = int(self._socket.getsockname()[1])
        self.connections = 0
        self._received: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="recorder", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> bytes:
        with self._lock:
            return b"".join(self._received)

    def __enter__(self) -> RecordingListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._record, args=(connection,), daemon=True).start()

    def _record(self, connection: socket.socket) -> None:
        connection.settimeout(0.5)
        deadline = time.monotonic() + 5
        with connection:
            while time.monotonic() < deadline:
                try:
                    data = connection.recv(65536)
                except TimeoutError:
                    break
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    self._received.append(data)
            with contextlib.suppress(OSError):
                connection.sendall(self.ANSWER)


def loopback_addresses(count: int, *, first: str = "127.1.0.1") -> list[str]:
    """``count`` consecutive loopback addresses (Linux answers on all of 127.0.0.0/8)."""
    start = ipaddress.IPv4Address(first)
    addresses = [str(start + i) for i in range(count)]
    if not all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network("127.0.0.0/8") for a in addresses):
        raise ValueError("addresses run out of 127.0.0.0/8")
    return addresses


def free_port_on(addresses: Sequence[str]) -> int:
    """A port free on the first address (good enough for fresh 127.x addresses)."""
    with socket.socket() as sock:
        sock.bind((addresses[0], 0))
        return int(sock.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve simulated nodes on loopback addresses.")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--dead", type=int, default=0, help="nodes that never answer (spread)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-address", default="127.1.0.1")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--users-per-gpu", type=int, default=2)
    parser.add_argument(
        "--exporter-metrics", action="store_true", help="serve the exporter's whole /metrics"
    )
    args = parser.parse_args(argv)
    behaviours = ["ok"] * args.count
    if args.dead:
        step = args.count / args.dead
        for k in range(args.dead):
            behaviours[int(k * step + step / 2)] = "hang"
    nodes = FakeNodes(
        behaviours,
        addresses=loopback_addresses(args.count, first=args.first_address),
        port=args.port,
        gpus=args.gpus,
        users_per_gpu=args.users_per_gpu,
        exporter_metrics=args.exporter_metrics,
    )

    async def run() -> None:
        await nodes.start()
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
