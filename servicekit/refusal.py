"""Answering the connections a server will not serve, without giving each one a worker thread.

A client over its share of the server (``--web.max-requests-per-client``) must get an HTTP answer,
503 with ``Retry-After``, not a connection closed in its face: over TLS a bare close reads as a
TLS error (``UNEXPECTED_EOF_WHILE_READING``), and an HTTP client cannot tell it from a crash. But
answering means a TLS handshake and reading the request head, and a client that stays silent
would hold a worker thread for the whole deadline: the very thing the share exists to prevent.

:class:`Refusals` does that work on one thread of its own, with non-blocking sockets and a
selector: the TLS handshake, the request head (read, so that closing does not reset a connection
with unread bytes and lose the answer), the answer, then a short lingering close. A connection
that is silent or slow is dropped at its deadline, costing a file descriptor, not a thread. It
holds at most ``max_connections`` connections, and ``max_per_client`` from one client, so a
flood from one address cannot crowd out the refusals of another; past those a connection is
closed at once, as before.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from servicekit.tls import PLAIN_HTTP_ANSWER, looks_like_http

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # enough of any honest request head; the answer does not depend on it
LINGER_SECONDS = 1.0  # after the answer, how long the client's own close is waited for
_SELECT_SECONDS = 0.5


@dataclass
class _Refused:
    """One connection on its way to its answer."""

    sock: socket.socket
    client: str
    answer: bytes
    deadline: float
    stage: str  # handshake (TLS, not started), head, answer, linger
    raw: bool = False  # read and write the TCP stream itself, not through TLS
    head: bytearray = field(default_factory=bytearray)
    sent: int = 0


class Refusals:
    """A thread answering refused connections (503, or whatever ``answer`` is) on its own.

    :meth:`take` hands it a connection from a worker thread; the connection is then its alone.
    """

    def __init__(
        self, *, timeout: float, max_connections: int = 512, max_per_client: int = 128
    ) -> None:
        self._timeout = timeout
        self._max = max_connections
        self._max_per_client = max_per_client
        self._incoming: queue.SimpleQueue[_Refused] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._per_client: dict[str, int] = {}
        self._held = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self.answered = 0  # connections that got their answer
        self.dropped = 0  # closed without one: over the caps, silent, too slow, or gone

    def take(
        self, sock: socket.socket, *, client: str, answer: bytes, handshake: bool = False
    ) -> bool:
        """Answer ``sock`` on this thread; False (the caller closes it) when the caps are full.

        ``handshake``: ``sock`` is an ``ssl.SSLSocket`` whose handshake has not happened yet; a
        client that speaks plain HTTP to it is answered :data:`PLAIN_HTTP_ANSWER` instead.
        ``answer`` is sent through TLS where ``sock`` is an ``ssl.SSLSocket``.
        """
        with self._lock:
            if self._stopping.is_set():
                return False
            if self._held >= self._max or self._per_client.get(client, 0) >= self._max_per_client:
                self.dropped += 1
                return False
            self._held += 1
            self._per_client[client] = self._per_client.get(client, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="refusals", daemon=True)
                self._thread.start()
        sock.setblocking(False)
        stage = "handshake" if handshake else "head"
        deadline = time.monotonic() + self._timeout
        self._incoming.put(_Refused(sock, client, answer, deadline, stage))
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._wake_writer.send(b"\0")
        return True

    def stop(self) -> None:
        """Drop every connection still held and end the thread."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def held(self) -> int:
        """Connections held now."""
        return self._held

    # ---- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_reader, selectors.EVENT_READ, None)
        pending: dict[int, _Refused] = {}  # by id(): a closed socket has no fileno
        try:
            while not self._stopping.is_set():
                self._admit(selector, pending)
                now = time.monotonic()
                soonest = min((r.deadline for r in pending.values()), default=now + 60)
                for key, _ in selector.select(max(0.0, min(soonest - now, _SELECT_SECONDS))):
                    refused = key.data
                    if refused is None:
                        with contextlib.suppress(OSError):
                            self._wake_reader.recv(4096)
                    else:
                        self._advance(selector, pending, refused)
                now = time.monotonic()
                for refused in [r for r in pending.values() if r.deadline <= now]:
                    self._finish(selector, pending, refused, answered=refused.stage == "linger")
        finally:
            for refused in list(pending.values()):
                self._finish(selector, pending, refused, answered=False)
            while True:
                try:
                    self._close(self._incoming.get_nowait(), answered=False)
                except queue.Empty:
                    break
            selector.close()

    def _admit(self, selector: selectors.BaseSelector, pending: dict[int, _Refused]) -> None:
        while True:
            try:
                refused = self._incoming.get_nowait()
            except queue.Empty:
                return
            try:
                selector.register(refused.sock, selectors.EVENT_READ, refused)
            except (OSError, ValueError):  # closed meanwhile
                self._close(refused, answered=False)
                continue
            pending[id(refused)] = refused
            self._advance(selector, pending, refused)  # it may have sent its bytes already

    def _advance(
        self, selector: selectors.BaseSelector, pending: dict[int, _Refused], refused: _Refused
    ) -> None:
        """Take ``refused`` as far as its socket allows now; wait for the next event after."""
        try:
            wait = self._step(refused)
        except (OSError, ValueError):  # ssl.SSLError included: a reset, a bad handshake
            self._finish(selector, pending, refused, answered=refused.stage == "linger")
            return
        if wait is None:
            self._finish(selector, pending, refused, answered=True)
            return
        with contextlib.suppress(OSError, ValueError, KeyError):
            selector.modify(refused.sock, wait, refused)

    def _step(self, refused: _Refused) -> int | None:
        """Advance through the stages; the event to wait for, or None when all is done."""
        sock = refused.sock
        while True:
            if refused.stage == "handshake":
                assert isinstance(sock, ssl.SSLSocket)
                if not refused.head:  # the first byte says whether it speaks TLS at all
                    try:
                        first = socket.socket.recv(sock, 1, socket.MSG_PEEK)
                    except BlockingIOError:
                        return selectors.EVENT_READ
                    if not first:
                        raise ConnectionResetError("closed before its handshake")
                    if looks_like_http(first):
                        refused.raw, refused.answer = True, PLAIN_HTTP_ANSWER
                        refused.stage = "head"
                        continue
                    refused.head += b"\x16"  # peeked: not looked at again
                try:
                    sock.do_handshake()
                except ssl.SSLWantReadError:
                    return selectors.EVENT_READ
                except ssl.SSLWantWriteError:
                    return selectors.EVENT_WRITE
                refused.head.clear()
                refused.stage = "head"
            elif refused.stage == "head":
                if not _read_head(sock, refused.head, raw=refused.raw):
                    return selectors.EVENT_READ
                refused.stage = "answer"
            elif refused.stage == "answer":
                send = socket.socket.send if refused.raw else type(sock).send
                try:
                    refused.sent += send(sock, refused.answer[refused.sent :])
                except (BlockingIOError, ssl.SSLWantWriteError):
                    return selectors.EVENT_WRITE
                except ssl.SSLWantReadError:
                    return selectors.EVENT_READ
                if refused.sent < len(refused.answer):
                    continue
                # Our side is done: the client reads the answer, then closes its own side.
                socket.socket.shutdown(sock, socket.SHUT_WR)
                refused.deadline = min(refused.deadline, time.monotonic() + LINGER_SECONDS)
                refused.stage = "linger"
            else:  # linger: what the client still sends is read and dropped until it closes
                if _drained(sock, raw=refused.raw):
                    return None
                return selectors.EVENT_READ

    def _finish(
        self,
        selector: selectors.BaseSelector,
        pending: dict[int, _Refused],
        refused: _Refused,
        *,
        answered: bool,
    ) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            selector.unregister(refused.sock)
        pending.pop(id(refused), None)
        self._close(refused, answered=answered)

    def _close(self, refused: _Refused, *, answered: bool) -> None:
        with contextlib.suppress(OSError):
            refused.sock.close()
        with self._lock:
            self._held -= 1
            count = self._per_client[refused.client] - 1
            if count:
                self._per_client[refused.client] = count
            else:
                del self._per_client[refused.client]
            if answered:
                self.answered += 1
            else:
                self.dropped += 1


def _recv(sock: socket.socket, *, raw: bool) -> bytes:
    return socket.socket.recv(sock, 4096) if raw else sock.recv(4096)


def _read_head(sock: socket.socket, head: bytearray, *, raw: bool) -> bool:
    """Read what has arrived of the request head; True once it is complete (or too long)."""
    while True:
        try:
            data = _recv(sock, raw=raw)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        if not data:
            raise ConnectionResetError("closed before its request was read")
        head += data
        if b"\r\n\r\n" in head or b"\n\n" in head or len(head) > MAX_HEAD_BYTES:
            return True


def _drained(sock: socket.socket, *, raw: bool) -> bool:
    """Read and drop what the client sends; True once it has closed its side."""
    while True:
        try:
            data = _recv(sock, raw=raw)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        if not data:
            return True
