"""XID errors from NVML events, counted by one background thread.

The thread registers every GPU that supports ``nvmlEventTypeXidCriticalError`` in one event set
and waits on it with a short timeout, so :meth:`XidWatcher.stop` returns within about a second.
It shares the sampler's :class:`~exporter.nvml_reader.NvmlSession` and never initialises NVML
itself: when the session re-initialises (driver reload), the old set is invalid and the thread
builds a new one. Scrapes never wait on it: the sampler copies :meth:`XidWatcher.counts` into
each snapshot.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from typing import Any

import pynvml

from exporter.nvml_reader import NvmlSession, is_session_error
from exporter.snapshot import XidSample

log = logging.getLogger(__name__)

_WAIT_MS = 500  # at most 1 s, so that stop() is prompt
_IDLE_SECONDS = 0.5  # between looks at a session that is not initialised
_RETRY_SECONDS = 5.0  # before registering again when no GPU could be registered


def _address(handle: Any) -> int | None:
    return ctypes.cast(handle, ctypes.c_void_p).value


class _GpuXids:
    """Mutable per-GPU state, only touched under the watcher's lock."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.last_xid: int | None = None
        self.last_timestamp: float | None = None

    def sample(self) -> XidSample:
        return XidSample(
            counts=tuple(sorted(self.counts.items())),
            last_xid=self.last_xid,
            last_timestamp_seconds=self.last_timestamp,
        )


class XidWatcher:
    """Counts XID events per GPU index; :meth:`counts` is safe from any thread."""

    def __init__(self, session: NvmlSession, *, wait_ms: int = _WAIT_MS) -> None:
        self._session = session
        self._wait_ms = min(wait_ms, 1000)
        self._lock = threading.Lock()
        self._gpus: dict[int, _GpuXids] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._generation = 0
        self._indices: dict[int | None, int] = {}  # handle address -> GPU index
        self._reported: set[str] = set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xid-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._wait_ms / 1000 + 1)
        if self._thread is None or not self._thread.is_alive():
            self._drop_set(free=self._session.initialized)

    def counts(self) -> dict[int, XidSample]:
        """Per GPU index registered so far: its XID counts and the last one."""
        with self._lock:
            return {index: gpu.sample() for index, gpu in self._gpus.items()}

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # the thread must outlive anything NVML or ctypes throws
                self._report_once("unexpected", "XID event watcher error; continuing")
                self._stop.wait(1.0)

    def _step(self) -> None:
        session = self._session
        if not session.initialized:
            self._event_set = None  # freed by the shutdown that ended its session
            self._stop.wait(_IDLE_SECONDS)
            return
        if self._event_set is None or self._generation != session.generation:
            self._drop_set(free=self._generation == session.generation)
            if not self._register(session.generation):
                self._stop.wait(_RETRY_SECONDS)
                return
        try:
            data = pynvml.nvmlEventSetWait_v2(self._event_set, self._wait_ms)
        except pynvml.NVMLError as error:
            if error.value == pynvml.NVML_ERROR_TIMEOUT:
                return
            # The sampler owns the session and notices a lost driver on its own; the set is
            # rebuilt once the session's generation moves on.
            self._report_once(f"wait:{error.value}", f"waiting for NVML events failed: {error}")
            if is_session_error(error):
                self._event_set = None
            self._stop.wait(1.0)
            return
        self._record(data)

    def _register(self, generation: int) -> bool:
        """A new event set holding every GPU that supports XID events; False if none does."""
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            event_set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as error:
            self._report_once("create", f"cannot create an NVML event set: {error}")
            return False
        indices: dict[int | None, int] = {}
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                supported = pynvml.nvmlDeviceGetSupportedEventTypes(handle)
                if not supported & pynvml.nvmlEventTypeXidCriticalError:
                    continue
                pynvml.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, event_set
                )
            except pynvml.NVMLError as error:  # lost or unsupported: this GPU only
                self._report_once(f"register:{index}", f"GPU {index}: no XID events: {error}")
                continue
            indices[_address(handle)] = index
        if not indices:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlEventSetFree(event_set)
            return False
        self._event_set, self._indices, self._generation = event_set, indices, generation
        with self._lock:
            for index in indices.values():
                self._gpus.setdefault(index, _GpuXids())
        log.info("watching XID events on %d GPU(s)", len(indices))
        return True

    def _drop_set(self, *, free: bool) -> None:
        event_set, self._event_set = self._event_set, None
        if event_set is not None and free:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlEventSetFree(event_set)

    def _record(self, data: Any) -> None:
        if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
            return
        index = self._indices.get(_address(data.device))
        if index is None:
            return
        xid = int(data.eventData)
        log.warning("GPU %d: XID %d", index, xid)
        with self._lock:
            gpu = self._gpus.setdefault(index, _GpuXids())
            gpu.counts[xid] = gpu.counts.get(xid, 0) + 1
            gpu.last_xid = xid
            gpu.last_timestamp = time.time()

    def _report_once(self, key: str, message: str) -> None:
        # One line per kind of trouble, not one per retry.
        if key not in self._reported:
            self._reported.add(key)
            log.warning("%s", message, exc_info=key == "unexpected")


__all__ = ["XidWatcher"]
