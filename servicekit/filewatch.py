"""Re-reading a file when it changes: the one mechanism behind every live-reloaded file.

The web configuration (and the certificates it names), the legacy password file, the node
basic-auth password file and hosts.txt all reload the same way, through :class:`WatchedFile`:

* a change is seen in the file's inode, mtime (ns) and size, so an editor's or configuration
  tool's rename-over is caught even within one mtime tick; with ``compare_content`` the bytes are
  hashed too, for files whose rewrite can keep all three (same length, same time stamp);
* ``min_interval`` bounds how often :meth:`WatchedFile.current` looks at the disk, for files
  consulted on every request;
* a reload that fails (or that ``refuse`` rejects) keeps the last good value and logs one error per
  change of the file, never one per check; the first load raises, so a service never starts on a
  broken file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, Optional, TypeVar

T = TypeVar("T")

_log = logging.getLogger(__name__)

# Inode, mtime in ns, size and (with a content check) a SHA-256; None: the file is unreadable.
FileStamp = Optional[tuple[int, int, int, bytes]]


def file_stamp(path: Path, *, content: bool = False) -> FileStamp:
    """What tells one version of ``path`` from another; None when it cannot be read."""
    try:
        stat = os.stat(path)
        digest = hashlib.sha256(path.read_bytes()).digest() if content else b""
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size, digest


class WatchedFile(Generic[T]):
    """The value loaded from ``path`` (and the files the value names), reloaded when they change.

    ``load`` reads the value; exceptions of the ``errors`` types mean a bad file (they propagate
    from the constructor, and are logged and survived afterwards). ``also_watch`` names further
    files a value depends on (certificates of a web configuration). ``refuse`` may veto a new
    value with a reason (a reload that would turn a protection off); ``on_reload`` is told of each
    new value. ``what`` names the file in the log and ``keeping`` says what is kept when a reload
    fails. Without a ``path`` the value is loaded once and never reloaded.
    """

    def __init__(
        self,
        path: Path | None,
        load: Callable[[], T],
        *,
        what: str,
        errors: tuple[type[Exception], ...],
        also_watch: Callable[[T], Iterable[Path]] = lambda value: (),
        compare_content: bool = False,
        min_interval: float = 0.0,
        refuse: Callable[[T, T], str | None] = lambda old, new: None,
        keeping: Callable[[T], str] = lambda value: "the previous one",
        on_reload: Callable[[T, T], None] = lambda old, new: None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.path = path
        self.last_error = ""
        self._load = load
        self._what = what
        self._errors = errors
        self._also_watch = also_watch
        self._content = compare_content
        self._min_interval = min_interval
        self._refuse = refuse
        self._keeping = keeping
        self._on_reload = on_reload
        self._log = logger or _log
        self._lock = threading.Lock()
        # The file is stamped before it is read, so a change during the read is seen next time.
        main = self._main_stamp()
        self._value = load()
        self._stamp = (main, self._extra_stamps(self._value))
        self._checked = time.monotonic()

    @property
    def value(self) -> T:
        """The last good value, without looking at the disk."""
        return self._value

    def current(self) -> T:
        """The value, reloaded first if the files changed and ``min_interval`` has passed.

        Meant for hot paths: one caller checks while the others go on with the value they have.
        """
        due = self.path is not None and time.monotonic() - self._checked >= self._min_interval
        if due and self._lock.acquire(blocking=False):
            try:
                if time.monotonic() - self._checked >= self._min_interval:
                    self._check()
            finally:
                self._lock.release()
        return self._value

    def refresh(self) -> bool:
        """Look at the files now; True when a new value was loaded."""
        if self.path is None:
            return False
        with self._lock:
            return self._check()

    def _main_stamp(self) -> FileStamp:
        return None if self.path is None else file_stamp(self.path, content=self._content)

    def _extra_stamps(self, value: T) -> tuple[FileStamp, ...]:
        return tuple(file_stamp(path, content=self._content) for path in self._also_watch(value))

    def _check(self) -> bool:
        self._checked = time.monotonic()
        stamp = (self._main_stamp(), self._extra_stamps(self._value))
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # a bad version is reported once, not at every check
        try:
            value = self._load()
        except self._errors as error:
            self._fail(str(error))
            return False
        reason = self._refuse(self._value, value)
        if reason is not None:
            self._fail(f"{self.path}: {reason}")
            return False
        if tuple(self._also_watch(value)) != tuple(self._also_watch(self._value)):
            self._stamp = (stamp[0], self._extra_stamps(value))
        old, self._value = self._value, value
        self.last_error = ""
        self._on_reload(old, value)
        return True

    def _fail(self, message: str) -> None:
        self.last_error = message
        self._log.error(
            "%s not reloaded, keeping %s: %s", self._what, self._keeping(self._value), message
        )
