"""A background thread that runs one asyncio task until stopped: the poller's and the engine
source's rounds both run on it.

:meth:`LoopThread.stop` cancels the task from any thread and abandons a round in progress (its
answers would be thrown away anyway); :meth:`LoopThread.start` returns once the task has set up
what it needs (it calls :meth:`LoopThread._ready`), so the first round is under way.

Both pause the cyclic garbage collector for a round (:func:`gc_paused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection until the block ends.

    A round decodes and builds about a million dicts and lists that live until the next round;
    the collector, started every 700 new objects, walked them again and again: at 2,000 nodes,
    45% of building a round's results. Reference counting frees garbage at once as before;
    only reference cycles wait for the end of the round, and the collector runs then.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class LoopThread:
    """Subclasses implement :meth:`_main`, call :meth:`_ready` once set up, and loop forever."""

    def __init__(self, *, name: str) -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._started.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _ready(self) -> None:
        self._started.set()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._task = loop.create_task(self._main())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
        finally:
            loop.close()

    async def _main(self) -> None:
        raise NotImplementedError
