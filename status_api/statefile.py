"""What the status service keeps across a restart: ``--state-file PATH``.

Only what cannot be read again from the nodes is kept: since when each GPU has been idle but
held (``NodeState.idle_since``, per node and GPU uuid or index), which is also what the users
table counts as idle-held GPUs. Everything else comes back with the first round.

The file is JSON::

    {"version": 1, "written_at": 1767225600.0,
     "nodes": [{"host": "node1", "port": 7080, "idle_since": {"GPU-...": 1767220000.0}}]}

It is written after a round that changed it, atomically: a temporary file in the same
directory, flushed and fsynced, renamed over the old one, then the directory fsynced, so a crash
or power cut leaves the old file or the new one, never half of one. A failed write (full disk,
read-only directory) is logged once until a write succeeds again and counted
(:attr:`StateFile.failures`); the service goes on serving, and tries again at the next round.

Reading happens once, at start. A missing file is a first start; one that cannot be read or
parsed is a warning and an empty state, never a reason not to start. Entries that do not
parse are left out one by one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
# A file larger than this is not one this service wrote (a few hundred bytes per idle GPU).
MAX_BYTES = 64 * 1024 * 1024

# Per node (Host.key: lower-case name or compressed IPv6 address, port): GPU key -> since when.
IdleState = dict[tuple[str, int], dict[str, float]]


def _entry(item: Any) -> tuple[tuple[str, int], dict[str, float]] | None:
    """One node's entry, or None when it is not one this service writes."""
    if not isinstance(item, dict):
        return None
    host, port, idle = item.get("host"), item.get("port"), item.get("idle_since")
    if not isinstance(host, str) or not isinstance(port, int) or not isinstance(idle, dict):
        return None
    if not host or not 0 < port < 65536:
        return None
    since = {
        key: float(value)
        for key, value in idle.items()
        if isinstance(key, str)
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    }
    return (host, port), since


def decode(data: bytes) -> IdleState:
    """The idle state in ``data``; ValueError when it is not a state file at all."""
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} state file")
    nodes = document.get("nodes")
    if not isinstance(nodes, list):
        raise ValueError("no list of nodes")
    state: IdleState = {}
    for item in nodes:
        entry = _entry(item)
        if entry is not None and entry[1]:
            state[entry[0]] = entry[1]
    return state


def encode(state: IdleState, *, now: float) -> bytes:
    nodes = [
        {"host": host, "port": port, "idle_since": dict(sorted(since.items()))}
        for (host, port), since in sorted(state.items())
        if since
    ]
    document = {"version": VERSION, "written_at": round(now, 3), "nodes": nodes}
    return json.dumps(document, separators=(",", ":")).encode("ascii") + b"\n"


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: the old contents or the new, never a mix, even after a
    crash. OSError when any step fails (the temporary file is then removed)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # The rename itself is durable once the directory is synced.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _copy(state: IdleState) -> IdleState:
    return {key: dict(since) for key, since in state.items()}


class StateFile:
    """The state file of one service: :meth:`load` once, then :meth:`save` after each round."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0
        self.failures = 0
        self._saved: IdleState | None = None  # what the file holds, as far as we know
        self._failing = False

    def load(self) -> IdleState:
        """The saved state; empty (with a warning unless the file is simply missing) when
        there is none to use."""
        try:
            with open(self.path, "rb") as file:
                data = file.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            state = decode(data)
        except FileNotFoundError:
            log.info("no state file at %s yet: idle-held GPUs are tracked from now", self.path)
            return {}
        except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeError are ValueErrors
            log.warning(
                "state file %s ignored (%s): idle-held GPUs are tracked from now", self.path, error
            )
            return {}
        self._saved = _copy(state)  # the caller takes entries out of the one it gets
        log.info("state file %s: idle-held periods of %d nodes restored", self.path, len(state))
        return state

    def save(self, state: IdleState) -> None:
        """Write ``state`` unless the file already holds it; never raises for an OSError."""
        if state == self._saved:
            return
        try:
            write_atomically(self.path, encode(state, now=time.time()))
        except OSError as error:
            self.failures += 1
            if not self._failing:
                log.error(
                    "cannot write the state file %s: %s; serving on, idle-held periods will "
                    "not survive a restart until it can be written (tried again every round)",
                    self.path,
                    error,
                )
            self._failing = True
            return
        self.writes += 1
        self._saved = _copy(state)
        if self._failing:
            log.info("state file %s written again", self.path)
        self._failing = False
