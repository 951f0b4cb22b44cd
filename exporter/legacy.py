"""The legacy JSON view of a snapshot, as the old node_info.py answered ``/get-status``.

Keys and their order are exactly the old ones, a process's memory included: ``mem(MiB)``, the
key old clients read. Memory is in MiB, utilisation in percent. A value NVML cannot give for a
GPU is ``null`` (the old script would have failed instead).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from exporter.snapshot import GpuSample, Snapshot

_MIB = 1024 * 1024


def _mib(value: int | None) -> int | None:
    return None if value is None else value // _MIB


def _percent(ratio: float | None) -> int | None:
    return None if ratio is None else round(ratio * 100)


def _whole(value: float | None) -> int | None:
    return None if value is None else round(value)


def _gpu(gpu: GpuSample) -> dict[str, Any]:
    return {
        "index": gpu.index,
        "name": gpu.name or "",
        "use_mem": _mib(gpu.memory_used_bytes),
        "tot_mem": _mib(gpu.memory_total_bytes),
        "utilize": _percent(gpu.utilization_ratio),
        "temp": _whole(gpu.temperature_celsius),
        "users": [
            {
                "pid": process.pid,
                "username": process.user,
                "mem(MiB)": _mib(process.gpu_memory_bytes),
                "command": process.command,
            }
            for process in gpu.processes
        ],
    }


def legacy_status(snapshot: Snapshot) -> dict[str, Any]:
    """The node's status in the old schema: hostname, last_update, ips, gpus."""
    updated = datetime.fromtimestamp(snapshot.timestamp).isoformat(timespec="microseconds")
    return {
        "hostname": snapshot.host.hostname,
        "last_update": updated,
        "ips": [[interface, address] for interface, address in snapshot.host.ips],
        "gpus": [_gpu(gpu) for gpu in snapshot.gpus],
    }


def legacy_status_json(snapshot: Snapshot) -> bytes:
    """The encoded body; ``ensure_ascii`` keeps hostile bytes as escapes, as json.dumps did."""
    return json.dumps(legacy_status(snapshot)).encode("ascii")
