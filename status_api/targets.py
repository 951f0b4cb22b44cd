"""Prometheus file_sd targets from hosts.txt: ``gpu-status-api targets -c hosts.txt -o FILE``.

Each node becomes one target group ``{"targets": ["host:port"], "labels": {"node": "host"}}``,
where ``node`` is the host as written in hosts.txt, without the port. The file is written to a
temporary file in the same directory and renamed over the old one, so Prometheus never reads half
a file. With ``--watch`` the command keeps running and regenerates the file when hosts.txt
changes; a change that breaks hosts.txt leaves the last good file in place and logs the error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from status_api.hosts import Host, HostsWatcher

log = logging.getLogger(__name__)


def _node_label(host: Host) -> str:
    return f"[{host.name}]" if host.ipv6 else host.name


def target_groups(hosts: list[Host]) -> list[dict[str, object]]:
    """The file_sd document for ``hosts``, in hosts.txt order."""
    return [{"targets": [host.netloc], "labels": {"node": _node_label(host)}} for host in hosts]


def render(hosts: list[Host]) -> bytes:
    return (json.dumps(target_groups(hosts), indent=2) + "\n").encode("utf-8")


def write_atomically(path: Path, data: bytes) -> bool:
    """Replace ``path`` with ``data`` by rename; False (and no write) when it already holds it."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; Prometheus may run as another user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True


def generate(
    hosts_path: Path,
    output: Path,
    *,
    default_port: int,
    watch: bool = False,
    interval: float = 2.0,
    stop: threading.Event | None = None,
) -> None:
    """Write the targets file once, or keep it in sync with hosts.txt until ``stop`` is set.

    Raises HostsFileError when hosts.txt is broken at start: a generator that starts on a broken
    file would have nothing correct to write.
    """
    watcher = HostsWatcher(hosts_path, default_port=default_port)
    if write_atomically(output, render(watcher.hosts)):
        log.info("wrote %d targets to %s", len(watcher.hosts), output)
    if not watch:
        return
    stop = stop or threading.Event()
    while not stop.wait(interval):
        if watcher.refresh() and write_atomically(output, render(watcher.hosts)):
            log.info("wrote %d targets to %s", len(watcher.hosts), output)
